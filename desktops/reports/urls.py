from __future__ import annotations

from django.urls import path

from desktops.reports import api

urlpatterns = [
    path("usage/", api.UsageView.as_view(), name="api-usage"),
    path("usage/hosts/", api.HostLoadView.as_view(), name="api-usage-hosts"),
]
