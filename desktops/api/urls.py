from __future__ import annotations

from rest_framework.routers import SimpleRouter

from desktops.api import direct_links, templates, views
from desktops.pools import api as pools

router = SimpleRouter()
router.register("desktops", views.DesktopViewSet, basename="desktop")
router.register("deployments", views.DeploymentViewSet, basename="deployment")
router.register("direct-links", direct_links.DirectLinkViewSet, basename="direct-link")
router.register("templates", templates.TemplateViewSet, basename="template")
router.register("pools", pools.PoolViewSet, basename="pool")

urlpatterns = router.urls
