"""Top-level URLs."""

from __future__ import annotations

from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

from isard.health import health_view

admin.site.site_header = "isard administration"
admin.site.site_title = "isard"

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("health/", health_view, name="health"),
    path("admin/", admin.site.urls),
]

# Opening a desktop: the browser viewer, a token to reconnect, the .vv file (issue 5).
from desktops import viewer_views  # noqa: E402

urlpatterns += [
    path(
        "desktops/<int:desktop_id>/viewer/",
        viewer_views.viewer_page,
        name="desktop-viewer",
    ),
    path(
        "desktops/<int:desktop_id>/viewer/token/",
        viewer_views.viewer_token,
        name="desktop-viewer-token",
    ),
    path(
        "desktops/<int:desktop_id>/viewer.vv",
        viewer_views.viewer_vv,
        name="desktop-viewer-vv",
    ),
    path(
        "desktops/<int:desktop_id>/viewer.rdp",
        viewer_views.viewer_rdp,
        name="desktop-viewer-rdp",
    ),
]
