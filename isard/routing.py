"""Websocket routes of every app, gathered in one list for `isard.asgi`."""

from __future__ import annotations

from django.urls import path

from desktops.consumers import DesktopStatusConsumer

websocket_urlpatterns = [
    path("ws/desktops/", DesktopStatusConsumer.as_asgi()),
]
