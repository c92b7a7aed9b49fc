from __future__ import annotations

from rest_framework.routers import SimpleRouter

from hypervisors.api import views

router = SimpleRouter()
router.register("hypervisors", views.HypervisorViewSet, basename="hypervisor")

urlpatterns = router.urls
