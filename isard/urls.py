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
