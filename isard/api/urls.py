"""/api/v1/: every app's endpoints, the OpenAPI schema and its documentation pages.

The documentation pages (Swagger UI, ReDoc) are served from the platform's own static
files (drf-spectacular-sidecar), never from a CDN.
"""

from __future__ import annotations

from django.urls import include, path, re_path
from drf_spectacular.views import (
    SpectacularAPIView,
    SpectacularRedocView,
    SpectacularSwaggerSplitView,
)
from rest_framework.permissions import AllowAny

from isard.core.api.errors import api_not_found

urlpatterns = [
    path(
        "schema/",
        SpectacularAPIView.as_view(permission_classes=[AllowAny], authentication_classes=[]),
        name="api-schema",
    ),
    path(
        "docs/",
        # Its start-up script as a file of its own (`?script`): no inline code, for the CSP.
        SpectacularSwaggerSplitView.as_view(
            url_name="api-schema", permission_classes=[AllowAny], authentication_classes=[]
        ),
        name="api-docs",
    ),
    path(
        "redoc/",
        SpectacularRedocView.as_view(
            url_name="api-schema",
            template_name="api/redoc.html",
            permission_classes=[AllowAny],
            authentication_classes=[],
        ),
        name="api-redoc",
    ),
    path("", include("accounts.api.urls")),
    path("", include("templates_app.api.urls")),
    path("", include("desktops.api.urls")),
    path("", include("desktops.fleet.api.urls")),
    path("", include("desktops.reports.urls")),
    # Not ".": it stops at a newline, and `/api/v1/desktops/1%0A/` fell through to Django.
    re_path(r"^(?P<unmatched>[\s\S]*)$", api_not_found),
]
