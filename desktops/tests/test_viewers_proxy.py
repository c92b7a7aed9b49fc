"""The viewer websocket proxy, through the real route, against a local stand-in VNC server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser

from accounts.choices import Role
from accounts.tests.factories import UserFactory
from desktops.choices import DesktopStatus
from desktops.models import Desktop
from desktops.viewer_consumers import (
    CLOSE_REFUSED,
    CLOSE_UNAUTHENTICATED,
    CLOSE_UNAVAILABLE,
    CLOSE_UNREACHABLE,
)
from desktops.viewers import viewer_token_issue
from hypervisors.drivers import libvirt_driver
from hypervisors.tests.factories import HypervisorFactory
from isard.routing import websocket_urlpatterns
from templates_app.tests.factories import HardwareProfileFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

GREETING = b"RFB 003.008\n"


@dataclass
class StandInVnc:
    """Greets like a VNC server, then echoes every byte back; counts its connections."""

    port: int = 0
    connections: int = 0
    received: bytearray = field(default_factory=bytearray)


@pytest_asyncio.fixture
async def vnc_server() -> AsyncIterator[StandInVnc]:
    state = StandInVnc()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        writer.write(GREETING)
        await writer.drain()
        while data := await reader.read(65536):
            state.received += data
            writer.write(data)
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    yield state
    server.close()
    await server.wait_closed()


@pytest.fixture
def ports_asked(monkeypatch: pytest.MonkeyPatch, vnc_server: StandInVnc) -> list[str]:
    """libvirt says every running guest's VNC server is the stand-in; records who asked."""
    asked: list[str] = []

    def ports(uri: str, name: str) -> libvirt_driver.GraphicsPorts:
        asked.append(name)
        return libvirt_driver.GraphicsPorts(None, None, vnc_server.port, "127.0.0.1")

    monkeypatch.setattr(libvirt_driver, "graphics_ports", ports)
    return asked


@database_sync_to_async
def student_with_desktop(status: DesktopStatus = DesktopStatus.STARTED) -> tuple[Any, Desktop]:
    owner = UserFactory.create(role=Role.STUDENT)
    desktop = Desktop.objects.create(
        name="d",
        owner=owner,
        hardware=HardwareProfileFactory.create(),
        status=status,
        hypervisor=HypervisorFactory.create(),
        graphics_password="12345678",
    )
    return owner, desktop


@database_sync_to_async
def issue(owner: Any, desktop: Desktop) -> str:
    return viewer_token_issue(actor=owner, desktop=desktop).token


@database_sync_to_async
def stop(desktop: Desktop) -> None:
    Desktop.objects.filter(pk=desktop.pk).update(status=DesktopStatus.STOPPED)


def communicator(user: Any, token: str, subprotocols: list[str] | None = None) -> Any:
    connection = WebsocketCommunicator(
        URLRouter(websocket_urlpatterns), f"/ws/viewer/{token}/", subprotocols=subprotocols
    )
    connection.scope["user"] = user
    connection.scope["client"] = ("127.0.0.1", 40000)
    return connection


async def closed_with(connection: Any) -> tuple[int, str]:
    """Refusals are accepted, then closed with a code and a reason the page can show."""
    connected, _ = await connection.connect()
    assert connected
    notice = json.loads(await connection.receive_from(timeout=2))
    message = await connection.receive_output(timeout=2)
    assert message["type"] == "websocket.close", message
    assert notice == {"type": "refused", "code": message["code"], "message": notice["message"]}
    assert message.get("reason", "") == notice["message"][:123]
    return message["code"], notice["message"]


async def test_the_owner_gets_a_byte_pipe_to_the_desktops_vnc_port(
    vnc_server: StandInVnc, ports_asked: list[str]
) -> None:
    owner, desktop = await student_with_desktop()
    connection = communicator(owner, await issue(owner, desktop))
    connected, _ = await connection.connect()
    assert connected
    assert await connection.receive_from(timeout=2) == GREETING
    payload = bytes(range(256)) * 64
    await connection.send_to(bytes_data=payload)
    echoed = b""
    while len(echoed) < len(payload):
        echoed += await connection.receive_from(timeout=2)
    assert echoed == payload
    assert ports_asked == [desktop.domain_name]
    assert vnc_server.connections == 1
    await connection.disconnect()


async def test_a_token_works_for_one_connection_only(
    vnc_server: StandInVnc, ports_asked: list[str]
) -> None:
    owner, desktop = await student_with_desktop()
    token = await issue(owner, desktop)
    first = communicator(owner, token)
    assert (await first.connect())[0]
    assert await first.receive_from(timeout=2) == GREETING
    code, reason = await closed_with(communicator(owner, token))
    assert code == CLOSE_REFUSED
    assert "already used" in reason
    assert vnc_server.connections == 1
    await first.disconnect()


async def test_another_student_cannot_use_a_students_token(
    vnc_server: StandInVnc, ports_asked: list[str]
) -> None:
    owner, desktop = await student_with_desktop()
    stranger, _ = await student_with_desktop()
    code, reason = await closed_with(communicator(stranger, await issue(owner, desktop)))
    assert code == CLOSE_REFUSED
    assert "issued to someone else" in reason
    assert ports_asked == [] and vnc_server.connections == 0


async def test_an_expired_token_is_refused(
    vnc_server: StandInVnc, ports_asked: list[str], settings: Any
) -> None:
    settings.ISARD_VIEWER_TOKEN_SECONDS = 0.2
    owner, desktop = await student_with_desktop()
    token = await issue(owner, desktop)
    await asyncio.sleep(0.3)
    code, reason = await closed_with(communicator(owner, token))
    assert code == CLOSE_REFUSED and "expired" in reason
    assert vnc_server.connections == 0


async def test_a_stopped_desktop_is_refused(vnc_server: StandInVnc, ports_asked: list[str]) -> None:
    owner, desktop = await student_with_desktop()
    token = await issue(owner, desktop)
    await stop(desktop)
    code, reason = await closed_with(communicator(owner, token))
    assert code == CLOSE_UNAVAILABLE and "is stopped" in reason
    assert vnc_server.connections == 0


async def test_anonymous_and_unknown_tokens_are_refused(vnc_server: StandInVnc) -> None:
    owner, desktop = await student_with_desktop()
    token = await issue(owner, desktop)
    assert (await closed_with(communicator(AnonymousUser(), token)))[0] == CLOSE_UNAUTHENTICATED
    assert (await closed_with(communicator(owner, "made-up")))[0] == CLOSE_REFUSED
    assert vnc_server.connections == 0


async def test_a_screen_that_does_not_answer_is_reported(
    monkeypatch: pytest.MonkeyPatch, vnc_server: StandInVnc
) -> None:
    closed_port = vnc_server.port
    monkeypatch.setattr(
        libvirt_driver,
        "graphics_ports",
        lambda uri, name: libvirt_driver.GraphicsPorts(None, None, closed_port, "127.0.0.2"),
    )
    owner, desktop = await student_with_desktop()
    code, reason = await closed_with(communicator(owner, await issue(owner, desktop)))
    assert code == CLOSE_UNREACHABLE and "does not answer" in reason


async def test_the_binary_subprotocol_is_accepted_when_offered(
    vnc_server: StandInVnc, ports_asked: list[str]
) -> None:
    owner, desktop = await student_with_desktop()
    connection = communicator(owner, await issue(owner, desktop), subprotocols=["binary"])
    connected, subprotocol = await connection.connect()
    assert connected and subprotocol == "binary"
    await connection.disconnect()


async def test_the_websocket_closes_when_the_guests_vnc_server_closes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def greet_and_hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(GREETING)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(greet_and_hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setattr(
        libvirt_driver,
        "graphics_ports",
        lambda uri, name: libvirt_driver.GraphicsPorts(None, None, port, "127.0.0.1"),
    )
    owner, desktop = await student_with_desktop()
    connection = communicator(owner, await issue(owner, desktop))
    assert (await connection.connect())[0]
    assert await connection.receive_from(timeout=2) == GREETING
    message = await connection.receive_output(timeout=2)
    assert message == {"type": "websocket.close", "code": 1000}
    await connection.disconnect()
    server.close()
    await server.wait_closed()


async def test_a_viewer_does_not_need_redis(
    vnc_server: StandInVnc, ports_asked: list[str], settings: Any
) -> None:
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]},  # nothing listens there
        }
    }
    owner, desktop = await student_with_desktop()
    connection = communicator(owner, await issue(owner, desktop))
    assert (await connection.connect())[0]
    assert await connection.receive_from(timeout=2) == GREETING
    await connection.disconnect()
