"""Live desktop status for the signed-in user, over a websocket."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from desktops.models import Desktop
from desktops.services import desktop_status_payload, owner_group


class DesktopStatusConsumer(AsyncJsonWebsocketConsumer):
    """Sends a snapshot of the user's desktops on connect, then every status change."""

    group: str | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        self.group = owner_group(user.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_json({"type": "snapshot", "desktops": await self._snapshot(user.pk)})

    async def disconnect(self, code: int) -> None:
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def desktop_status(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "status", "desktop": event["desktop"]})

    @database_sync_to_async
    def _snapshot(self, user_id: int) -> list[dict[str, Any]]:
        return [desktop_status_payload(d) for d in Desktop.objects.filter(owner_id=user_id)]
