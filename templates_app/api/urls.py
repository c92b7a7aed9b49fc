from __future__ import annotations

from rest_framework.routers import SimpleRouter

# /templates/ is registered by `desktops.api.urls`: making a template of a desktop is the
# desktops room's (see `desktops.api.templates`).
from templates_app.api import views

router = SimpleRouter()
router.register("hardware-profiles", views.HardwareProfileViewSet, basename="hardware-profile")
router.register("media", views.MediaViewSet, basename="media")

urlpatterns = router.urls
