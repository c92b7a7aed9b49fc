"""Websocket routes of every app, gathered in one list for `isard.asgi`."""

from __future__ import annotations

from django.urls import path

from desktops.consumers import DesktopStatusConsumer

websocket_urlpatterns = [
    path("ws/desktops/", DesktopStatusConsumer.as_asgi()),
]

# The browser viewer's proxy to one desktop's VNC port (issue 5).
from desktops.viewer.consumers import ViewerProxyConsumer  # noqa: E402

websocket_urlpatterns.append(path("ws/viewer/<str:token>/", ViewerProxyConsumer.as_asgi()))
