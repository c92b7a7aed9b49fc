"""The viewer proxy's hop to hypervisors whose displays need TLS, on real daemons and guests.

Two libvirt daemons of their own (per-user `qemu:///session` daemons, as in
test_multihost.py, under users of this module only) are set up the way
`manage.py isard_certs --hypervisor` sets up a remote host: certificates from the platform
CA in their own directories, and `vnc_tls`, `vnc_tls_x509_verify` and `spice_tls` on in
their `qemu.conf`. A real tiny guest boots on one of them. Then:

- a plain VNC client cannot use the guest's VNC port (it offers VeNCrypt only), and a TLS
  client without a certificate of the platform CA is refused by QEMU;
- the platform's websocket proxy (served by Daphne) opens it with VeNCrypt x509, signs in
  with the password, and an RFB client on the browser's side (no password) gets the real
  screen: the same pixels as QEMU's own screendump, while the guest's VGA text holds its
  boot marker, and QEMU lists the proxy's certificate as its client; headless Chromium's
  noVNC draws the same pixels;
- the guest moves live to the other host; the connection ends, and a new token reaches it
  there (the proxy asks where the desktop runs at connect time), over TLS again.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import ssl
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from django.conf import settings as django_settings
from django.db import connections
from django.test import Client

from accounts.choices import Role
from accounts.tests.factories import UserFactory
from desktops.choices import DesktopStatus
from desktops.fleet.monitoring import hypervisor_refresh
from desktops.fleet.moves import desktop_live_migrate
from desktops.models import Desktop
from desktops.services.domains import serial_log_path
from desktops.services.lifecycle import desktop_start
from desktops.services.provisioning import desktop_create
from desktops.viewer.files import viewer_vv_build
from desktops.viewer.rfb import RfbHandshakeError, UpstreamTls, upstream_sign_in
from desktops.viewer.services import viewer_token_issue
from hypervisors import tls
from hypervisors.choices import AcceleratorSetting, MoveReason, MoveStatus, PoolPurpose
from hypervisors.drivers import libvirt_driver
from hypervisors.guest_image import GUEST_READY_MARKER
from hypervisors.models import Hypervisor
from hypervisors.services.accelerator import hypervisor_detect_accelerator
from hypervisors.services.hosts import hypervisor_register
from tests.integration.browser import (
    CANVAS_PIXELS,
    AsgiServer,
    same_pixels,
    sign_in,
    vga_text_on,
    wait_for_state,
)
from tests.integration.conftest import wait_for
from tests.integration.test_multihost import SessionDaemon
from tests.integration.test_viewers_rfb import (
    Framebuffer,
    RfbClient,
    RfbError,
    TcpTransport,
    WebsocketTransport,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(os.geteuid() != 0, reason="making the hosts' users needs root"),
]

# Short names: QEMU monitor sockets live under the home directory (108-byte limit).
HOST_USERS = ("isardvt-a", "isardvt-b")
#: Display and migration ports of each TLS daemon, apart from the multi-host test's and
#: the system daemon's (see `SessionDaemon`).
TLS_HOST_PORTS = (((16100, 16199), (49400, 49449)), ((16200, 16299), (49450, 49499)))


@dataclass
class TlsHost:
    """A session daemon set up as a hypervisor whose displays need TLS."""

    name: str
    daemon: SessionDaemon

    @property
    def config_dir(self) -> Path:
        return Path(self.daemon.account.pw_dir) / ".config" / "libvirt"

    def configure(self, pki: tls.PkiPaths) -> tls.LibvirtSpiceResult:
        files = tls.hypervisor_certificate_issue(
            paths=pki,
            hypervisor_name=self.name,
            names=tls.HostNames(dns=(f"{self.name}.isard.test",), addresses=("127.0.0.1",)),
        )
        account = self.daemon.account
        return tls.hypervisor_tls_install(
            files=files,
            qemu_conf=self.config_dir / "qemu.conf",
            vnc_dir=self.config_dir / "pki-vnc",
            spice_dir=self.config_dir / "pki-spice",
            owner=(account.pw_uid, account.pw_gid),
        )


@pytest.fixture(scope="module")
def module_pki(tmp_path_factory: pytest.TempPathFactory) -> tls.PkiPaths:
    return tls.PkiPaths(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_daemons(module_pki: tls.PkiPaths) -> Iterator[tuple[TlsHost, TlsHost]]:
    pair = (
        TlsHost("tls-a", SessionDaemon(HOST_USERS[0], *TLS_HOST_PORTS[0])),
        TlsHost("tls-b", SessionDaemon(HOST_USERS[1], *TLS_HOST_PORTS[1])),
    )
    for host in pair:
        host.daemon.prepare()
        host.configure(module_pki)
        # A daemon reads qemu.conf when it starts: start it afresh with TLS on.
        host.daemon.kill_libvirtd()
        host.daemon.start()
    yield pair
    for host in pair:
        host.daemon.shut_down()


@pytest.fixture
def tls_hosts(
    tls_daemons: tuple[TlsHost, TlsHost],
    module_pki: tls.PkiPaths,
    pools: dict[str, Any],
    storage_root: Path,
    settings: Any,
) -> Iterator[tuple[Hypervisor, Hypervisor]]:
    """Both daemons registered as TCG hosts on shared storage; the platform uses the PKI."""
    settings.ISARD_PKI_DIR = module_pki.directory
    settings.ISARD_VIEWER_TLS = "required"  # even on loopback: every hop must be TLS here
    settings.ISARD_LOCK_NAMESPACE = f"isard-test-{uuid.uuid4().hex}"
    desktops_pool = pools[PoolPurpose.DESKTOPS.value]
    desktops_pool.shared = True
    desktops_pool.save()
    logs = storage_root / "logs"
    logs.mkdir(exist_ok=True)
    logs.chmod(0o777)  # each daemon writes its guests' serial logs here
    made = []
    for host in tls_daemons:
        host.daemon.remove_guests()
        hypervisor = hypervisor_register(name=host.name, uri=host.daemon.uri)
        Hypervisor.objects.filter(pk=hypervisor.pk).update(
            accelerator_setting=AcceleratorSetting.QEMU, migration_address="127.0.0.1"
        )
        hypervisor.refresh_from_db()
        hypervisor = hypervisor_detect_accelerator(hypervisor=hypervisor, probe_image=Path("/"))
        made.append(hypervisor_refresh(hypervisor=hypervisor))
    yield made[0], made[1]
    for host in tls_daemons:
        host.daemon.remove_guests()


def monitor(uri: str, domain: str, command: str) -> str:
    return subprocess.run(
        ["virsh", "-c", uri, "qemu-monitor-command", domain, "--hmp", command],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def screendump(uri: str, domain: str, directory: Path) -> tuple[int, int, bytes]:
    """QEMU's own picture of the screen (HMP `screendump`, a PPM): width, height, RGB.

    QEMU writes the file itself, as the daemon's user: `directory` must be writable by it.
    """
    path = directory / f"{domain}.ppm"
    path.unlink(missing_ok=True)
    monitor(uri, domain, f"screendump {path}")
    data = path.read_bytes()
    fields = data.split(maxsplit=4)
    assert fields[0] == b"P6" and fields[3] == b"255", data[:20]
    return int(fields[1]), int(fields[2]), fields[4]


def matches_screendump(framebuffer: Framebuffer, dump: tuple[int, int, bytes]) -> float:
    width, height, rgb = dump
    if (width, height) != (framebuffer.width, framebuffer.height):
        return 0.0
    rgbx = bytearray(len(rgb) // 3 * 4)
    rgbx[0::4], rgbx[1::4], rgbx[2::4] = rgb[0::3], rgb[1::3], rgb[2::3]
    return same_pixels(framebuffer.pixels, rgbx)


def closing_connections(call: Callable[[], Any]) -> Callable[[], Any]:
    """`call`, closing the database connection its thread opened: a connection left open
    in a finished thread keeps PostgreSQL from dropping the test database."""

    def run() -> Any:
        try:
            return call()
        finally:
            connections.close_all()

    return run


def session_cookie(user: Any) -> str:
    client = Client()
    client.force_login(user)
    name = django_settings.SESSION_COOKIE_NAME
    return f"{name}={client.cookies[name].value}"


def through_proxy(
    server: AsgiServer,
    user: Any,
    desktop: Desktop,
    while_open: list[Callable[[], Any]] | None = None,
) -> Framebuffer:
    """Open the viewer as the browser does (a fresh token, no password) and read a frame;
    call each of `while_open` (appending its result) while the connection is open."""
    access = viewer_token_issue(actor=user, desktop=desktop)
    url = f"ws://127.0.0.1:{server.port}{access.websocket_path}"
    cookie = session_cookie(user)

    async def read() -> Framebuffer:
        transport = await WebsocketTransport.open(url, cookie=cookie, origin=server.base_url)
        client = RfbClient(transport)
        await client.handshake("")  # the proxy offers security type None only
        framebuffer = await client.full_frame()
        for index, call in enumerate(while_open or []):
            while_open[index] = await asyncio.to_thread(  # type: ignore[index]
                closing_connections(call)
            )
        await client.close()
        return framebuffer

    return asyncio.run(read())


def open_during(
    server: AsgiServer, user: Any, desktop: Desktop, action: Callable[[], Any], results: list[Any]
) -> int | None:
    """Open the viewer, run `action` while it is open, then return how the proxy closed the
    connection (its close code), reading screen updates until it does."""
    from websockets.exceptions import ConnectionClosed

    access = viewer_token_issue(actor=user, desktop=desktop)
    url = f"ws://127.0.0.1:{server.port}{access.websocket_path}"
    cookie = session_cookie(user)

    async def run() -> int | None:
        transport = await WebsocketTransport.open(url, cookie=cookie, origin=server.base_url)
        client = RfbClient(transport)
        await client.handshake("")
        await client.full_frame()
        results.append(await asyncio.to_thread(closing_connections(action)))
        try:
            for _ in range(100):
                await client.request(incremental=True)
                await asyncio.wait_for(client.read_update(), timeout=30)
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd is not None else None
        finally:
            await client.close()
        raise AssertionError("the viewer stayed connected to a guest that left its host")

    return asyncio.run(run())


def vnc_port(uri: str, desktop: Desktop) -> int:
    port = libvirt_driver.graphics_ports(uri, desktop.domain_name).vnc_port
    assert port is not None
    return port


def test_the_proxy_reaches_tls_only_displays_and_follows_a_desktop_that_moved(
    tls_hosts: tuple[Hypervisor, Hypervisor],
    module_pki: tls.PkiPaths,
    tiny_image: Path,
    direct_tasks: list[str],
    platform_server: AsgiServer,
    chromium: Any,
    caplog: pytest.LogCaptureFixture,
    storage_root: Path,
) -> None:
    from templates_app.demo import demo_hardware_profile
    from templates_app.services.templates import template_register_base

    template = template_register_base(
        name="Tiny Linux (demo)", image=tiny_image, hardware=demo_hardware_profile()
    )
    owner = UserFactory.create(role=Role.STUDENT, username="ana")
    desktop = desktop_create(actor=owner, template=template, name="Ana's remote desktop")
    desktop.refresh_from_db()
    assert desktop.status == DesktopStatus.STOPPED, desktop.status_reason
    assert desktop.disk is not None
    os.chmod(desktop.disk.path, 0o666)  # the two daemons run qemu as two different users
    desktop_start(actor=owner, desktop=desktop)
    desktop.refresh_from_db()
    assert desktop.status == DesktopStatus.STARTED, desktop.status_reason
    source = desktop.hypervisor
    assert source is not None
    target = next(host for host in tls_hosts if host != source)
    log = serial_log_path(desktop)
    wait_for(
        lambda: log.exists() and GUEST_READY_MARKER in log.read_text(errors="replace"),
        240,
        "the guest to boot",
    )
    wait_for(
        lambda: GUEST_READY_MARKER in vga_text_on(source.uri, desktop.domain_name),
        60,
        "the marker on the guest's screen",
    )
    port = vnc_port(source.uri, desktop)

    # 1. Plain VNC gets nowhere: the port offers VeNCrypt (19) and nothing else.
    async def plain_client() -> None:
        client = RfbClient(await TcpTransport.open("127.0.0.1", port))
        try:
            await client.handshake(desktop.graphics_password)
        finally:
            await client.close()

    with pytest.raises(RfbError, match=r"no supported security type in \[19\]"):
        asyncio.run(plain_client())

    # 2. TLS without a certificate of the platform CA: QEMU refuses the handshake.
    async def tls_without_client_certificate() -> None:
        context = ssl.create_default_context(cadata=tls.ca_bundle_pem(paths=module_pki))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def no_certificate() -> UpstreamTls:
            return UpstreamTls(context=context, server_hostname="127.0.0.1")

        try:
            upstream = await upstream_sign_in(
                reader,
                writer,
                password=desktop.graphics_password,
                tls=no_certificate,
                require_tls=True,
            )
            # TLS 1.3 clients finish their side first; QEMU's refusal arrives on next read.
            upstream.writer.write(b"\x01")
            await upstream.writer.drain()
            if not await upstream.reader.read(1):
                raise RfbHandshakeError("closed")
        finally:
            writer.close()

    with pytest.raises((RfbHandshakeError, ssl.SSLError, ConnectionError)):
        asyncio.run(tls_without_client_certificate())

    # 3. Through the platform's proxy: VeNCrypt x509, the password, the real screen.
    with caplog.at_level(logging.INFO, logger="desktops.viewer.consumers"):
        framebuffer = through_proxy(platform_server, owner, desktop)
    assert framebuffer.name == f"QEMU ({desktop.domain_name})"
    assert framebuffer.non_background_ratio() > 0.005  # text, not a blank screen
    wait_for(
        lambda: (
            matches_screendump(
                through_proxy(platform_server, owner, desktop),
                screendump(source.uri, desktop.domain_name, storage_root / "logs"),
            )
            > 0.99
        ),
        30,
        "the proxied screen to equal QEMU's screendump",
    )
    assert f"connected to 127.0.0.1:{port} (TLS)" in caplog.text
    # QEMU's own view of the connection: VeNCrypt x509 + VNC, the proxy's certificate.
    info: list[Any] = [lambda: monitor(source.uri, desktop.domain_name, "info vnc")]
    through_proxy(platform_server, owner, desktop, while_open=info)
    assert "Auth: vencrypt (Sub: x509-vnc)" in info[0], info[0]
    assert f"CN={tls.PROXY_CLIENT_NAME}" in info[0], info[0]

    # Headless Chromium's noVNC, through the same proxy and TLS hop, draws that screen.
    sign_in(chromium, platform_server, owner)
    chromium.get(f"{platform_server.base_url}/desktops/{desktop.pk}/viewer/")
    assert wait_for_state(chromium, "connected") == f"Connected to QEMU ({desktop.domain_name})"
    assert desktop.graphics_password not in chromium.page_source

    def canvas_matches() -> float:
        width, height, encoded = chromium.execute_script(CANVAS_PIXELS)
        canvas = Framebuffer(width, height, "", bytearray(base64.b64decode(encoded)))
        return matches_screendump(
            canvas, screendump(source.uri, desktop.domain_name, storage_root / "logs")
        )

    wait_for(lambda: canvas_matches() > 0.99, 30, "Chromium's canvas to equal the screen")
    chromium.get("about:blank")  # close the viewer before the guest moves

    # The .vv file names this hypervisor's own certificate, which its SPICE TLS port shows.
    ports = libvirt_driver.graphics_ports(source.uri, desktop.domain_name)
    assert ports.spice_tls_port is not None
    context = ssl.create_default_context(cadata=tls.ca_bundle_pem(paths=module_pki))
    with (
        socket.create_connection(("127.0.0.1", ports.spice_tls_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as connection,
    ):
        der = connection.getpeercert(binary_form=True)
    assert der is not None
    host_certificate = tls.hypervisor_certificate(paths=module_pki, hypervisor_name=source.name)
    assert x509.load_der_x509_certificate(der) == host_certificate
    vv = viewer_vv_build(actor=owner, desktop=desktop, pki=module_pki)
    assert f"host-subject=O=isard,CN={source.name}.isard.test\n" in vv.content

    # 4. The desktop moves live to the other host while a viewer is open: that connection
    # ends (the page then reconnects with a new token), and a new token follows it there.
    moves: list[Any] = []

    def migrate() -> Any:
        return desktop_live_migrate(desktop=desktop, target=target, reason=MoveReason.BALANCE)

    close_code = open_during(platform_server, owner, desktop, migrate, moves)
    [move] = moves
    assert move.status == MoveStatus.DONE, move.detail
    assert close_code == 1000  # a normal close: noVNC reports a disconnect, the page retries
    desktop.refresh_from_db()
    assert desktop.hypervisor == target and desktop.status == DesktopStatus.STARTED
    new_port = vnc_port(target.uri, desktop)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="desktops.viewer.consumers"):
        moved = through_proxy(platform_server, owner, desktop)
    assert moved.name == f"QEMU ({desktop.domain_name})"
    assert f"connected to 127.0.0.1:{new_port} (TLS)" in caplog.text
    assert GUEST_READY_MARKER in vga_text_on(target.uri, desktop.domain_name)
    wait_for(
        lambda: (
            matches_screendump(
                through_proxy(platform_server, owner, desktop),
                screendump(target.uri, desktop.domain_name, storage_root / "logs"),
            )
            > 0.99
        ),
        30,
        "the proxied screen on the new host",
    )
