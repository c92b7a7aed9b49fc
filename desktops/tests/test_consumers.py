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
from desktops.services.transitions import broadcast_desktop_status, desktop_transition
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


@database_sync_to_async
def course_with(teacher: Any, student: Any) -> Any:
    from accounts.choices import CourseRole
    from accounts.tests.factories import CourseFactory, MembershipFactory

    course = CourseFactory.create()
    MembershipFactory.create(course=course, user=teacher, role=CourseRole.TEACHER)
    MembershipFactory.create(course=course, user=student)
    return course


@database_sync_to_async
def enrol_desktop(desktop: Desktop, course: Any) -> None:
    Desktop.objects.filter(pk=desktop.pk).update(course=course)
    desktop.course = course


async def test_teacher_follows_their_courses_desktops_and_another_teacher_is_refused() -> None:
    from accounts.choices import Role

    student, desktop = await make()
    teacher = await database_sync_to_async(UserFactory.create)(role=Role.TEACHER)
    stranger = await database_sync_to_async(UserFactory.create)(role=Role.TEACHER)
    course = await course_with(teacher, student)
    await enrol_desktop(desktop, course)

    def follow(user: Any) -> WebsocketCommunicator:
        communicator = WebsocketCommunicator(
            DesktopStatusConsumer.as_asgi(), f"/ws/desktops/?course={course.pk}"
        )
        communicator.scope["user"] = user
        return communicator

    teacher_socket, stranger_socket = follow(teacher), follow(stranger)
    assert (await teacher_socket.connect())[0]
    snapshot = await teacher_socket.receive_json_from()
    assert [d["id"] for d in snapshot["desktops"]] == [desktop.pk]
    connected, code = await stranger_socket.connect()
    assert not connected and code == 4403

    await start(desktop)
    message = await teacher_socket.receive_json_from(timeout=2)
    assert message["desktop"]["id"] == desktop.pk
    assert message["desktop"]["status"] == "starting"
    assert message["desktop"]["course"] == course.pk
    await teacher_socket.disconnect()


async def test_an_idle_socket_stays_open_longer_than_the_layers_blocking_read() -> None:
    """channels_redis waits for messages with BZPOPMIN for `brpop_timeout` seconds; redis-py
    8 gives every socket a 5-second read timeout by default, so an idle dashboard's
    consumer died with "Timeout reading from Redis" every few seconds and the page kept
    reconnecting. Found by the classroom browser test."""
    import asyncio

    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    assert layer is not None
    owner, desktop = await make()
    mine = connect(owner)
    assert (await mine.connect())[0]
    await mine.receive_json_from()  # the snapshot
    await asyncio.sleep(layer.brpop_timeout + 2)  # idle through a whole blocking read
    await start(desktop)
    message = await mine.receive_json_from(timeout=5)
    assert message["desktop"]["status"] == "starting"
    await mine.disconnect()
