"""The viewer websocket proxy, through the real route, against a local stand-in VNC server.

The stand-in asks for VNC authentication like QEMU without TLS (on loopback the proxy may
use it); after it the stand-in echoes every byte back. The proxy must sign in with the
desktop's password itself and greet the browser with security type None. The real QEMU,
with and without TLS, is in tests/integration/test_viewers*.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser

from accounts.choices import CourseRole, Role
from accounts.tests.factories import CourseFactory, MembershipFactory, UserFactory
from desktops.choices import DesktopStatus
from desktops.models import Desktop
from desktops.viewer.consumers import (
    CLOSE_REFUSED,
    CLOSE_UNAUTHENTICATED,
    CLOSE_UNAVAILABLE,
    CLOSE_UNREACHABLE,
)
from desktops.viewer.rfb import vnc_auth_response
from desktops.viewer.services import viewer_token_issue
from hypervisors.drivers import libvirt_driver
from hypervisors.tests.factories import HypervisorFactory
from isard.routing import websocket_urlpatterns
from templates_app.tests.factories import HardwareProfileFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

GREETING = b"RFB 003.008\n"
PASSWORD = "12345678"


@dataclass
class StandInVnc:
    """Asks for VNC authentication, then echoes every byte back; counts what it saw."""

    port: int = 0
    connections: int = 0
    password: str = PASSWORD
    authenticated: int = 0
    auth_attempts: int = 0
    versions: list[bytes] = field(default_factory=list)
    received: bytearray = field(default_factory=bytearray)


@pytest_asyncio.fixture
async def vnc_server() -> AsyncIterator[StandInVnc]:
    state = StandInVnc()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        try:
            writer.write(GREETING)
            state.versions.append(await reader.readexactly(12))
            writer.write(b"\x01\x02")  # one security type: VNC authentication
            assert await reader.readexactly(1) == b"\x02"
            challenge = os.urandom(16)
            writer.write(challenge)
            response = await reader.readexactly(16)
            state.auth_attempts += 1
            if response != vnc_auth_response(state.password, challenge):
                writer.write(
                    struct.pack(">I", 1) + struct.pack(">I", 21) + b"Authentication failed"
                )
                await writer.drain()
                return
            state.authenticated += 1
            writer.write(struct.pack(">I", 0))
            await writer.drain()
            while data := await reader.read(65536):
                state.received += data
                writer.write(data)
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()
            await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    yield state
    server.close()
    await server.wait_closed()


async def browser_opening(connection: Any, version: bytes = GREETING) -> None:
    """What noVNC does first: the proxy greets it as a server that asks for no password."""
    assert await connection.receive_from(timeout=5) == GREETING
    await connection.send_to(bytes_data=version)
    if version == b"RFB 003.003\n":
        assert await connection.receive_from(timeout=2) == struct.pack(">I", 1)
        return
    assert await connection.receive_from(timeout=2) == b"\x01\x01"  # one type: None
    await connection.send_to(bytes_data=b"\x01")
    if version == GREETING:
        assert await connection.receive_from(timeout=2) == struct.pack(">I", 0)


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
        graphics_password=PASSWORD,
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
    await browser_opening(connection)
    # The proxy signed in with the desktop's password before the browser said anything.
    assert vnc_server.authenticated == 1 and vnc_server.versions == [GREETING]
    payload = bytes(range(256)) * 64
    await connection.send_to(bytes_data=payload)
    # The first byte is the browser's ClientInit: the proxy always asks for a shared
    # session (b"\x00", exclusive, would disconnect every other viewer); the rest is as sent.
    relayed = b"\x01" + payload[1:]
    echoed = b""
    while len(echoed) < len(payload):
        echoed += await connection.receive_from(timeout=2)
    assert echoed == relayed
    assert bytes(vnc_server.received) == relayed
    assert ports_asked == [desktop.domain_name]
    assert vnc_server.connections == 1
    await connection.disconnect()


@pytest.mark.parametrize("version", [b"RFB 003.003\n", b"RFB 003.007\n"])
async def test_older_viewers_get_the_same_password_free_opening(
    vnc_server: StandInVnc, ports_asked: list[str], version: bytes
) -> None:
    owner, desktop = await student_with_desktop()
    connection = communicator(owner, await issue(owner, desktop))
    assert (await connection.connect())[0]
    await browser_opening(connection, version)
    await connection.send_to(bytes_data=b"\x01")  # ClientInit: shared
    assert await connection.receive_from(timeout=2) == b"\x01"
    await connection.disconnect()


async def test_the_browsers_opening_may_arrive_in_pieces_with_its_client_init(
    vnc_server: StandInVnc, ports_asked: list[str]
) -> None:
    owner, desktop = await student_with_desktop()
    connection = communicator(owner, await issue(owner, desktop))
    assert (await connection.connect())[0]
    assert await connection.receive_from(timeout=5) == GREETING
    await connection.send_to(bytes_data=GREETING[:5])
    await connection.send_to(bytes_data=GREETING[5:])
    assert await connection.receive_from(timeout=2) == b"\x01\x01"
    await connection.send_to(bytes_data=b"\x01\x01")  # security choice and ClientInit at once
    assert await connection.receive_from(timeout=2) == struct.pack(">I", 0)
    assert await connection.receive_from(timeout=2) == b"\x01"
    await connection.disconnect()


async def test_a_browser_that_insists_on_a_password_type_is_dropped(
    vnc_server: StandInVnc, ports_asked: list[str]
) -> None:
    owner, desktop = await student_with_desktop()
    connection = communicator(owner, await issue(owner, desktop))
    assert (await connection.connect())[0]
    assert await connection.receive_from(timeout=5) == GREETING
    await connection.send_to(bytes_data=GREETING)
    assert await connection.receive_from(timeout=2) == b"\x01\x01"
    await connection.send_to(bytes_data=b"\x02")
    message = await connection.receive_output(timeout=2)
    assert message == {"type": "websocket.close", "code": 1002}
    assert vnc_server.received == bytearray()


@database_sync_to_async
def set_password(desktop: Desktop, password: str) -> None:
    Desktop.objects.filter(pk=desktop.pk).update(graphics_password=password)


async def test_a_display_that_refuses_the_password_is_reported(
    vnc_server: StandInVnc, ports_asked: list[str]
) -> None:
    owner, desktop = await student_with_desktop()
    token = await issue(owner, desktop)
    await set_password(desktop, "wrong")
    code, reason = await closed_with(communicator(owner, token))
    assert code == CLOSE_UNREACHABLE and "did not accept the viewer" in reason
    assert vnc_server.auth_attempts == 1 and vnc_server.authenticated == 0


async def test_when_tls_is_required_a_display_without_it_never_gets_the_password(
    vnc_server: StandInVnc, ports_asked: list[str], settings: Any
) -> None:
    settings.ISARD_VIEWER_TLS = "required"
    owner, desktop = await student_with_desktop()
    code, reason = await closed_with(communicator(owner, await issue(owner, desktop)))
    assert code == CLOSE_UNREACHABLE and "cannot be reached securely" in reason
    assert vnc_server.connections == 1 and vnc_server.auth_attempts == 0


async def test_a_token_works_for_one_connection_only(
    vnc_server: StandInVnc, ports_asked: list[str]
) -> None:
    owner, desktop = await student_with_desktop()
    token = await issue(owner, desktop)
    first = communicator(owner, token)
    assert (await first.connect())[0]
    await browser_opening(first)
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
        await reader.readexactly(12)
        writer.write(b"\x01\x01")  # None: the proxy signs in without a password
        await reader.readexactly(1)
        writer.write(struct.pack(">I", 0))
        await reader.readexactly(1)  # the browser's ClientInit, relayed
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
    await browser_opening(connection)
    await connection.send_to(bytes_data=b"\x01")
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
    await browser_opening(connection)
    await connection.disconnect()


async def test_a_tls_display_with_the_platforms_certificates_missing_is_explained(
    monkeypatch: pytest.MonkeyPatch, settings: Any, tmp_path: Any
) -> None:
    settings.ISARD_PKI_DIR = tmp_path / "no-pki-yet"

    async def vencrypt_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(GREETING)
        await reader.readexactly(12)
        writer.write(b"\x01\x13")  # VeNCrypt only, as QEMU with vnc_tls
        try:
            await reader.readexactly(1)
            writer.write(b"\x00\x02")
            await reader.readexactly(2)
            writer.write(b"\x00\x01" + struct.pack(">I", 261))
            await reader.read(4)
        except asyncio.IncompleteReadError:
            pass
        writer.close()

    server = await asyncio.start_server(vencrypt_only, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setattr(
        libvirt_driver,
        "graphics_ports",
        lambda uri, name: libvirt_driver.GraphicsPorts(None, None, port, "127.0.0.1"),
    )
    owner, desktop = await student_with_desktop()
    code, reason = await closed_with(communicator(owner, await issue(owner, desktop)))
    assert code == CLOSE_UNREACHABLE and "certificates are not set up" in reason
    # The proxy made no CA of its own: it would trust nothing the hypervisors hold.
    assert not (tmp_path / "no-pki-yet" / "ca-cert.pem").exists()
    server.close()
    await server.wait_closed()


@database_sync_to_async
def teacher_of(desktop: Desktop) -> tuple[Any, str]:
    """A teacher of the desktop's course, and a view-only token of theirs for it."""
    course = CourseFactory.create(school=desktop.owner.school)
    Desktop.objects.filter(pk=desktop.pk).update(course=course)
    desktop.refresh_from_db()
    teacher = UserFactory.create(role=Role.TEACHER, school=desktop.owner.school)
    MembershipFactory.create(course=course, user=teacher, role=CourseRole.TEACHER)
    return teacher, viewer_token_issue(actor=teacher, desktop=desktop, view_only=True).token


async def test_a_view_only_viewer_joins_shared_and_its_input_never_reaches_the_display(
    vnc_server: StandInVnc, ports_asked: list[str]
) -> None:
    _owner, desktop = await student_with_desktop()
    teacher, token = await teacher_of(desktop)
    connection = communicator(teacher, token)
    assert (await connection.connect())[0]
    await browser_opening(connection)
    key_down = struct.pack(">BBxxI", 4, 1, 0x61)
    pointer = struct.pack(">BBHH", 5, 1, 10, 10)
    update_request = struct.pack(">BBHHHH", 3, 0, 0, 0, 640, 480)
    # An exclusive ClientInit (noVNC's `shared: false`), typing, clicking, and a request
    # for the screen: only the shared ClientInit and the screen request go on.
    await connection.send_to(bytes_data=b"\x00" + key_down + pointer[:2])
    await connection.send_to(bytes_data=pointer[2:] + update_request + key_down)
    expected = b"\x01" + update_request
    echoed = b""
    while len(echoed) < len(expected):
        echoed += await connection.receive_from(timeout=2)
    assert echoed == expected
    assert bytes(vnc_server.received) == expected
    await connection.disconnect()


def viewer_counts() -> dict[str, dict[tuple[str, ...], float]]:
    from isard.core import metrics

    counters = metrics.read_counters(metrics.metrics_redis())
    return {
        name: {sample.labels: sample.value for sample in counters[name]}
        for name in (metrics.VIEWER_CONNECTIONS_OPENED.name, metrics.VIEWER_CONNECTIONS_CLOSED.name)
    }


async def test_an_open_and_closed_viewer_is_counted_and_a_refused_one_is_not(
    vnc_server: StandInVnc, ports_asked: list[str]
) -> None:
    from isard.core import metrics

    await asyncio.to_thread(metrics.reset_all)
    owner, desktop = await student_with_desktop()
    refused = communicator(owner, "not-a-token")
    await closed_with(refused)
    await refused.disconnect()
    assert await asyncio.to_thread(viewer_counts) == {
        "isard_viewer_connections_opened": {},
        "isard_viewer_connections_closed": {},
    }
    connection = communicator(owner, await issue(owner, desktop))
    assert (await connection.connect())[0]
    await browser_opening(connection)
    assert (await asyncio.to_thread(viewer_counts))["isard_viewer_connections_opened"] == {
        ("browser",): 1
    }
    await connection.disconnect()
    counts = await asyncio.to_thread(viewer_counts)
    await asyncio.to_thread(metrics.reset_all)
    assert counts == {
        "isard_viewer_connections_opened": {("browser",): 1},
        "isard_viewer_connections_closed": {("browser",): 1},
    }


async def test_an_open_viewer_is_present_until_it_closes(
    vnc_server: StandInVnc, ports_asked: list[str]
) -> None:
    from desktops.viewer.presence import presence_of

    owner, desktop = await student_with_desktop()
    connection = communicator(owner, await issue(owner, desktop))
    assert (await connection.connect())[0]
    await browser_opening(connection)
    seen = await asyncio.to_thread(presence_of, [desktop.pk])
    assert seen[desktop.pk].open == 1
    await connection.disconnect()
    seen = await asyncio.to_thread(presence_of, [desktop.pk])
    assert seen[desktop.pk].open == 0 and seen[desktop.pk].last_seen is not None
