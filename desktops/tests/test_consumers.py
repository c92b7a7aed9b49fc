"""The live status websocket, with Channels' communicator and the real Redis layer."""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from accounts.tests.factories import UserFactory
from desktops.choices import DesktopStatus
from desktops.consumers import DesktopStatusConsumer
from desktops.models import Desktop
from desktops.services import broadcast_desktop_status, desktop_transition
from templates_app.tests.factories import HardwareProfileFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


def connect(user: Any) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(DesktopStatusConsumer.as_asgi(), "/ws/desktops/")
    communicator.scope["user"] = user
    return communicator


@database_sync_to_async
def make(owner: Any = None) -> tuple[Any, Desktop]:
    owner = owner or UserFactory.create()
    desktop = Desktop.objects.create(
        name="d",
        owner=owner,
        hardware=HardwareProfileFactory.create(),
        status=DesktopStatus.STOPPED,
    )
    return owner, desktop


@database_sync_to_async
def start(desktop: Desktop) -> None:
    desktop_transition(desktop=desktop, to=DesktopStatus.STARTING)
    broadcast_desktop_status(desktop.pk)


async def test_owner_gets_a_snapshot_then_each_change_and_others_get_nothing() -> None:
    owner, desktop = await make()
    stranger, _ = await make()
    mine, theirs = connect(owner), connect(stranger)
    assert (await mine.connect())[0] and (await theirs.connect())[0]
    snapshot = await mine.receive_json_from()
    assert snapshot["type"] == "snapshot"
    assert [d["id"] for d in snapshot["desktops"]] == [desktop.pk]
    assert [d["id"] for d in (await theirs.receive_json_from())["desktops"]] != [desktop.pk]

    await start(desktop)
    message = await mine.receive_json_from(timeout=2)
    assert message["type"] == "status"
    assert message["desktop"]["status"] == "starting"
    assert await theirs.receive_nothing(timeout=0.3)
    await mine.disconnect()
    await theirs.disconnect()


async def test_anonymous_users_are_refused() -> None:
    from django.contrib.auth.models import AnonymousUser

    communicator = connect(AnonymousUser())
    connected, code = await communicator.connect()
    assert not connected
    assert code == 4401
