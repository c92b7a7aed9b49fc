from __future__ import annotations

from rest_framework.routers import SimpleRouter

from desktops.fleet.api import views

router = SimpleRouter()
router.register("hypervisors", views.HypervisorViewSet, basename="hypervisor")

urlpatterns = router.urls
