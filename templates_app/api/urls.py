from __future__ import annotations

from rest_framework.routers import SimpleRouter

from templates_app.api import views

router = SimpleRouter()
router.register("templates", views.TemplateViewSet, basename="template")
router.register("hardware-profiles", views.HardwareProfileViewSet, basename="hardware-profile")
router.register("media", views.MediaViewSet, basename="media")

urlpatterns = router.urls
