"""Live desktop status over a websocket: my desktops, or a course I teach.

`/ws/desktops/` follows the signed-in person's own desktops; `/ws/desktops/?course=<id>`
follows every desktop of a course, for the people who manage it (its teachers, the
school's managers, admins). Each connection gets a snapshot, then every status change.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from accounts.models import Course, User
from accounts.permissions import can_manage_course
from desktops.models import Desktop
from desktops.permissions import desktops_visible_to
from desktops.services.transitions import course_group, desktop_status_payload, owner_group


class DesktopStatusConsumer(AsyncJsonWebsocketConsumer):
    """Sends a snapshot of the followed desktops on connect, then every status change."""

    group: str | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        query = parse_qs(self.scope.get("query_string", b"").decode())
        course_ids = query.get("course", [])
        if course_ids:
            course_id = await self._managed_course(user, course_ids[0])
            if course_id is None:
                await self.close(code=4403)  # not a course this person manages
                return
            self.group = course_group(course_id)
            desktops = {"course_id": course_id}
        else:
            self.group = owner_group(user.pk)
            desktops = {"owner_id": user.pk, "hidden_from": user.pk}
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_json({"type": "snapshot", "desktops": await self._snapshot(desktops)})

    async def disconnect(self, code: int) -> None:
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def desktop_status(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "status", "desktop": event["desktop"]})

    @database_sync_to_async
    def _managed_course(self, user: User, raw_id: str) -> int | None:
        course = Course.objects.filter(pk=int(raw_id)).first() if raw_id.isdigit() else None
        if course is None or not can_manage_course(user, course):
            return None
        return course.pk

    @database_sync_to_async
    def _snapshot(self, filters: dict[str, int]) -> list[dict[str, Any]]:
        desktops = Desktop.objects.all()
        if "hidden_from" in filters:
            # A person's own list: what the role policy lets them see (no hidden deployment).
            viewer = User.objects.get(pk=filters.pop("hidden_from"))
            desktops = desktops_visible_to(viewer)
        return [desktop_status_payload(d) for d in desktops.filter(**filters)]
