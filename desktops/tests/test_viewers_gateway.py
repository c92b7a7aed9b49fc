"""The SPICE gateway, over real sockets: remote-viewer's CONNECT, as spice-gtk sends it, to a
loopback server standing in for the desktop's display.

The stand-in echoes every byte, plain or inside TLS: the gateway copies bytes and must
not care which. libvirt's answer (which port the running guest's SPICE TLS listens on) is
the stand-in's port, as in the other viewer tests.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
from channels.db import database_sync_to_async
from django.utils import timezone

from accounts.choices import Role
from accounts.tests.factories import UserFactory
from desktops.choices import DesktopStatus
from desktops.models import Desktop, DesktopEvent, GatewayCredential
from desktops.viewer.files import viewer_vv_build
from desktops.viewer.gateway import MAX_HEADER_BYTES, gateway_start, gateway_take_handoffs
from desktops.viewer.gateway_access import IssuedCredential, gateway_credential_issue
from desktops.viewer.presence import presence_of
from hypervisors import tls
from hypervisors.drivers import libvirt_driver
from hypervisors.tests.factories import HypervisorFactory
from isard.core.handoff import handoff_send, handoff_socket
from templates_app.tests.factories import HardwareProfileFactory

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.asyncio,
    pytest.mark.usefixtures("clean_throttles"),
]

PASSWORD = "Pa55-w0r"


@dataclass
class StandIn:
    """A loopback server that echoes every byte back; counts its connections."""

    port: int = 0
    connections: int = 0
    received: bytearray = field(default_factory=bytearray)


async def serve_echo(ssl_context: ssl.SSLContext | None = None) -> tuple[StandIn, Any]:
    state = StandIn()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        try:
            while data := await reader.read(65536):
                state.received += data
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ssl_context)
    state.port = server.sockets[0].getsockname()[1]
    return state, server


@pytest_asyncio.fixture
async def display() -> AsyncIterator[StandIn]:
    state, server = await serve_echo()
    yield state
    server.close()
    await server.wait_closed()


@pytest_asyncio.fixture
async def elsewhere() -> AsyncIterator[StandIn]:
    """Another service on the same host: the gateway must never reach it."""
    state, server = await serve_echo()
    yield state
    server.close()
    await server.wait_closed()


@pytest.fixture
def spice_tls_port(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """libvirt says every running guest's SPICE TLS port is `port[0]` (set by the test)."""
    port = [0]
    monkeypatch.setattr(
        libvirt_driver,
        "graphics_ports",
        lambda uri, name: libvirt_driver.GraphicsPorts(None, port[0], 5907, "127.0.0.1"),
    )
    return port


@pytest_asyncio.fixture
async def gateway() -> AsyncIterator[int]:
    server = await gateway_start(host="127.0.0.1", port=0, idle_seconds=0.5)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


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
def issue(owner: Any, desktop: Desktop, **kwargs: Any) -> IssuedCredential:
    return gateway_credential_issue(actor=owner, desktop=desktop, **kwargs)


@database_sync_to_async
def gateway_events(desktop: Desktop) -> list[str]:
    return [
        e.reason for e in DesktopEvent.objects.filter(desktop=desktop, reason__contains="gateway")
    ]


def basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


async def connect(
    gateway_port: int, target: str, authorization: str | None, *, head: bytes | None = None
) -> tuple[int, bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    """Send a CONNECT as GIO's HTTP proxy does for spice-gtk; return the status and head."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway_port)
    if head is None:
        lines = [f"CONNECT {target} HTTP/1.0", f"Host: {target}", "User-Agent: GLib/2.80"]
        if authorization is not None:
            lines.append(f"Proxy-Authorization: Basic {authorization}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    writer.write(head)
    await writer.drain()
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    return int(answer.split(b" ")[1]), answer, reader, writer


async def tunnel_with(
    gateway_port: int, credential: IssuedCredential, target: str
) -> tuple[int, bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    return await connect(gateway_port, target, basic(credential.public_id, credential.secret))


async def test_a_valid_credential_tunnels_bytes_both_ways_to_the_desktops_display(
    display: StandIn, spice_tls_port: list[int], gateway: int
) -> None:
    spice_tls_port[0] = display.port
    owner, desktop = await student_with_desktop()
    credential = await issue(owner, desktop)
    status, head, reader, writer = await tunnel_with(
        gateway, credential, f"127.0.0.1:{display.port}"
    )
    assert status == 200 and head.startswith(b"HTTP/1.1 200 ")
    # An open tunnel is someone looking at the desktop (the idle shutdown asks).
    assert (await asyncio.to_thread(presence_of, [desktop.pk]))[desktop.pk].open >= 1
    writer.write(b"\x00\x01binary SPICE-ish bytes\xff" * 100)
    await writer.drain()
    echoed = await asyncio.wait_for(reader.readexactly(2500), timeout=5)
    assert echoed == b"\x00\x01binary SPICE-ish bytes\xff" * 100
    assert bytes(display.received) == echoed
    writer.close()
    # Every channel is its own tunnel: a second one with the same credential works too.
    status, *_, second = await tunnel_with(gateway, credential, f"127.0.0.1:{display.port}")
    assert status == 200
    second.close()
    assert len(await gateway_events(desktop)) == 2


@pytest_asyncio.fixture
async def shared_port() -> AsyncIterator[int]:
    """A listening port that does what a web worker does with a CONNECT on the shared
    HTTPS port: accept, read nothing, pass the descriptor to the gateway, close its copy."""
    path = Path(tempfile.mkdtemp(prefix="isard-gw-", dir="/tmp")) / "gateway.sock"
    stop_taking = gateway_take_handoffs(path, idle_seconds=0.5)
    loop = asyncio.get_running_loop()
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    listening.setblocking(False)
    sender = handoff_socket()

    async def front() -> None:
        while True:
            connection, _ = await loop.sock_accept(listening)
            assert handoff_send(sender, path, connection)
            connection.close()

    task = asyncio.ensure_future(front())
    yield listening.getsockname()[1]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    listening.close()
    sender.close()
    await stop_taking()
    path.parent.rmdir()


async def test_a_connection_handed_over_from_the_https_port_is_served_as_if_accepted(
    display: StandIn, spice_tls_port: list[int], shared_port: int
) -> None:
    spice_tls_port[0] = display.port
    owner, desktop = await student_with_desktop()
    credential = await issue(owner, desktop)
    status, _, reader, writer = await tunnel_with(
        shared_port, credential, f"127.0.0.1:{display.port}"
    )
    assert status == 200
    writer.write(b"through the shared port")
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(23), timeout=5) == b"through the shared port"
    writer.close()
    # The gateway decides as ever: no credential, 407; another port, 403.
    status, *_, writer = await connect(shared_port, f"127.0.0.1:{display.port}", None)
    writer.close()
    assert status == 407
    status, *_, writer = await tunnel_with(shared_port, credential, "127.0.0.1:22")
    writer.close()
    assert status == 403


async def test_a_handoff_to_a_gateway_that_is_not_running_says_so() -> None:
    path = Path(tempfile.mkdtemp(prefix="isard-gw-", dir="/tmp")) / "gateway.sock"
    with socket.socket() as connection, handoff_socket() as sender:
        assert not handoff_send(sender, path, connection)
    path.parent.rmdir()


async def test_tls_passes_through_the_tunnel_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spice_tls_port: list[int], gateway: int
) -> None:
    monkeypatch.setattr(tls, "RSA_KEY_SIZE", 2048)
    pki = tls.PkiPaths(tmp_path / "pki")
    tls.host_certificate_ensure(paths=pki, names=tls.HostNames(dns=("vdi.school.example",)))
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(pki.host_cert, pki.host_key)
    qemu, server = await serve_echo(server_context)
    spice_tls_port[0] = qemu.port
    try:
        owner, desktop = await student_with_desktop()
        credential = await issue(owner, desktop)
        status, _, reader, writer = await tunnel_with(gateway, credential, f"127.0.0.1:{qemu.port}")
        assert status == 200
        # The client verifies the display's certificate end to end, through the gateway.
        client_context = ssl.create_default_context(cadata=tls.ca_bundle_pem(paths=pki))
        await writer.start_tls(client_context, server_hostname="vdi.school.example")
        writer.write(b"inside TLS")
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(10), timeout=5) == b"inside TLS"
        assert qemu.received == b"inside TLS"
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_the_vv_files_proxy_line_opens_the_tunnel_its_host_and_port_name(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
    display: StandIn,
    spice_tls_port: list[int],
    gateway: int,
) -> None:
    monkeypatch.setattr(tls, "RSA_KEY_SIZE", 2048)
    settings.ISARD_PKI_DIR = tmp_path / "pki"
    tls.host_certificate_ensure(
        paths=tls.pki_paths(), names=tls.HostNames(dns=("vdi.school.example",))
    )
    settings.ISARD_GATEWAY_PORT = gateway
    settings.ISARD_GATEWAY_SHARED = False  # its own port, as a gateway behind a TLS proxy
    settings.ISARD_PUBLIC_HOST = ""
    monkeypatch.setattr(libvirt_driver, "set_graphics_password", lambda *a, **k: None)
    spice_tls_port[0] = display.port
    owner, desktop = await student_with_desktop()
    vv = await database_sync_to_async(viewer_vv_build)(
        actor=owner, desktop=desktop, public_host="127.0.0.1"
    )
    fields = dict(line.split("=", 1) for line in vv.content.splitlines()[1:] if "=" in line)
    proxy = urlsplit(fields["proxy"])
    assert (proxy.scheme, proxy.hostname, proxy.port) == ("http", "127.0.0.1", gateway)
    assert proxy.username and proxy.password
    target = f"{fields['host']}:{fields['tls-port']}"
    status, *_, writer = await connect(gateway, target, basic(proxy.username, proxy.password))
    assert status == 200
    writer.close()


async def test_any_other_port_or_host_is_refused_and_never_connected_to(
    display: StandIn, elsewhere: StandIn, spice_tls_port: list[int], gateway: int
) -> None:
    spice_tls_port[0] = display.port
    owner, desktop = await student_with_desktop()
    credential = await issue(owner, desktop)
    for target in (f"127.0.0.1:{elsewhere.port}", f"127.0.0.2:{display.port}", "localhost:22"):
        status, *_, writer = await tunnel_with(gateway, credential, target)
        writer.close()
        assert status == 403, target
    assert elsewhere.connections == 0 and display.connections == 0
    assert await gateway_events(desktop) == []  # no tunnel opened
    refusals = await database_sync_to_async(
        DesktopEvent.objects.filter(desktop=desktop, reason__contains="(wrong-target)").count
    )()
    assert refusals == 3


async def test_a_bad_expired_or_revoked_credential_asks_for_authentication(
    display: StandIn, spice_tls_port: list[int], gateway: int
) -> None:
    spice_tls_port[0] = display.port
    owner, desktop = await student_with_desktop()
    target = f"127.0.0.1:{display.port}"
    good = await issue(owner, desktop)
    expired = await issue(owner, desktop, now=timezone.now() - timedelta(days=1))
    revoked = await issue(owner, desktop)
    await database_sync_to_async(
        GatewayCredential.objects.filter(public_id=revoked.public_id).update
    )(revoked=True)
    for authorization in (
        basic(good.public_id, "wrong secret"),
        basic("no-such-id", good.secret),
        basic(expired.public_id, expired.secret),
        basic(revoked.public_id, revoked.secret),
        None,
    ):
        status, head, _, writer = await connect(gateway, target, authorization)
        writer.close()
        assert status == 407, authorization
        assert b'Proxy-Authenticate: Basic realm="isard"' in head
    assert display.connections == 0
    assert await gateway_events(desktop) == []


async def test_a_stopped_desktop_is_refused(
    display: StandIn, spice_tls_port: list[int], gateway: int
) -> None:
    spice_tls_port[0] = display.port
    owner, desktop = await student_with_desktop(status=DesktopStatus.STOPPED)
    credential = await issue(owner, desktop)
    status, *_, writer = await tunnel_with(gateway, credential, f"127.0.0.1:{display.port}")
    writer.close()
    assert status == 403 and display.connections == 0


async def test_another_students_desktop_is_refused_even_with_their_own_credential(
    display: StandIn, spice_tls_port: list[int], gateway: int
) -> None:
    spice_tls_port[0] = display.port
    _, anas = await student_with_desktop()
    ben, _ = await student_with_desktop()
    # A credential row naming Ana's desktop but issued to Ben (no path issues one: the
    # .vv builder checks first); the gateway checks again at each tunnel.
    credential = await issue(ben, anas)
    status, *_, writer = await tunnel_with(gateway, credential, f"127.0.0.1:{display.port}")
    writer.close()
    assert status == 403 and display.connections == 0


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"CONNECT 127.0.0.1 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT 127.0.0.1:99999 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT [::1 HTTP/1.1\r\n\r\n", 400),
        (b"hello there\r\n\r\n", 400),
        (b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nX: \xff\r\n\r\n", 400),
        (b"GET http://127.0.0.1:1/ HTTP/1.1\r\n\r\n", 405),
        (b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nX: " + b"a" * MAX_HEADER_BYTES + b"\r\n\r\n", 431),
    ],
)
async def test_malformed_requests_are_answered_and_closed(
    head: bytes, status: int, gateway: int
) -> None:
    answered, _, reader, writer = await connect(gateway, "", None, head=head)
    assert answered == status
    assert await asyncio.wait_for(reader.read(), timeout=5) == b""
    writer.close()


async def test_an_idle_tunnel_is_closed(
    display: StandIn, spice_tls_port: list[int], gateway: int
) -> None:
    spice_tls_port[0] = display.port
    owner, desktop = await student_with_desktop()
    credential = await issue(owner, desktop)
    status, _, reader, writer = await tunnel_with(gateway, credential, f"127.0.0.1:{display.port}")
    assert status == 200
    # The gateway of this test closes after 0.5 s without a byte either way.
    assert await asyncio.wait_for(reader.read(), timeout=5) == b""
    writer.close()


async def test_a_flood_of_refused_connects_is_429_and_successes_never_count(
    display: StandIn, spice_tls_port: list[int], gateway: int, settings: Any
) -> None:
    settings.ISARD_GATEWAY_FAILURE_RATE = "3/minute"
    spice_tls_port[0] = display.port
    owner, desktop = await student_with_desktop()
    credential = await issue(owner, desktop)
    target = f"127.0.0.1:{display.port}"
    for _ in range(6):  # a session's channels and reconnects: more than the rate
        status, *_, writer = await tunnel_with(gateway, credential, target)
        writer.close()
        assert status == 200
    for _ in range(3):
        status, *_, writer = await connect(gateway, target, basic(credential.public_id, "x"))
        writer.close()
        assert status == 407
    # Now even the right credential is refused: nothing is looked at while limited.
    status, *_, writer = await tunnel_with(gateway, credential, target)
    writer.close()
    assert status == 429
    assert len(await gateway_events(desktop)) == 6


async def test_the_preflight_says_when_students_devices_have_no_gateway(
    settings: Any, tmp_path: Path
) -> None:
    from isard.checks import check_spice_gateway

    settings.ISARD_GATEWAY_SHARED, settings.ISARD_TLS_PORT = True, 8443
    settings.ISARD_GATEWAY_SOCKET = tmp_path / "run" / "gateway.sock"
    assert check_spice_gateway() == []
    assert (tmp_path / "run").is_dir()
    settings.ISARD_TLS_PORT, settings.ISARD_GATEWAY_PORT = 0, 0
    (warning,) = check_spice_gateway()
    assert warning.id == "isard.W050" and "ISARD_TLS_PORT=0" in warning.msg
    settings.ISARD_GATEWAY_PORT = 8445
    assert check_spice_gateway() == []
    settings.ISARD_TLS_PORT = 8443
    settings.ISARD_GATEWAY_SOCKET = Path("/proc/isard/gateway.sock")
    (error,) = check_spice_gateway()
    assert error.id == "isard.E051"


async def test_gateway_tunnels_opened_and_closed_are_counted(
    display: StandIn, spice_tls_port: list[int], gateway: int
) -> None:
    from isard.core import metrics

    def counts() -> tuple[list[float], list[float]]:
        counters = metrics.read_counters(metrics.metrics_redis())
        return (
            [s.value for s in counters[metrics.VIEWER_CONNECTIONS_OPENED.name]],
            [s.value for s in counters[metrics.VIEWER_CONNECTIONS_CLOSED.name]],
        )

    await asyncio.to_thread(metrics.reset_all)
    spice_tls_port[0] = display.port
    owner, desktop = await student_with_desktop()
    credential = await issue(owner, desktop)
    status, *_, writer = await tunnel_with(gateway, credential, f"127.0.0.1:{display.port}")
    assert status == 200
    assert (await asyncio.to_thread(counts))[0] == [1]
    writer.close()
    for _ in range(100):  # the gateway notices the close on its next read
        if (await asyncio.to_thread(counts))[1]:
            break
        await asyncio.sleep(0.05)
    opened_closed = await asyncio.to_thread(counts)
    await asyncio.to_thread(metrics.reset_all)
    assert opened_closed == ([1], [1])
