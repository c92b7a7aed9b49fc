from __future__ import annotations

from rest_framework.routers import SimpleRouter

from desktops.api import views

router = SimpleRouter()
router.register("desktops", views.DesktopViewSet, basename="desktop")
router.register("deployments", views.DeploymentViewSet, basename="deployment")

urlpatterns = router.urls
