"""Issue 5 on real guests with real clients this project did not write.

- Headless Chromium (Debian's, driven by Selenium through chromedriver) signs in as the
  owner, opens the browser viewer served by Daphne, and noVNC shows the guest's console:
  the canvas equals, pixel for pixel, the framebuffer read straight from QEMU, and the
  guest's VGA text memory holds the boot marker. After a network blip it reconnects.
- `remote-viewer` (Debian's virt-viewer) under Xvfb opens the `.vv` file: SPICE over TLS
  only, with the USB redirection channels of the hardware profile.
- OpenSSL (Python's `ssl`) verifies the guest's SPICE TLS port against the platform CA.

The platform, Chromium and the screen helpers are shared with the other browser tests
(`browser.py`, fixtures in `conftest.py`); Celery tasks run directly when the services
schedule them.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from django.conf import settings
from django.test import Client

from accounts.choices import Role
from accounts.tests.factories import UserFactory
from desktops.choices import DesktopStatus
from desktops.models import Desktop, DesktopEvent, ViewerProtocol, ViewerToken
from desktops.services.domains import serial_log_path
from desktops.services.lifecycle import desktop_start
from desktops.services.provisioning import desktop_create
from desktops.viewer.files import viewer_vv_build
from desktops.viewer.gateway import gateway_start
from desktops.viewer.services import viewer_token_issue
from hypervisors import tls
from hypervisors.drivers import libvirt_driver
from hypervisors.guest_image import GUEST_READY_MARKER
from tests.integration.browser import (
    ARTIFACTS,
    AsgiServer,
    canvas_matches_screen,
    direct_framebuffer,
    page_state,
    same_pixels,
    sign_in,
    vga_text,
    wait_for_state,
)
from tests.integration.conftest import SYSTEM_URI, wait_for
from tests.integration.test_viewers_rfb import RfbClient, WebsocketTransport

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


# --- a real guest, started through the services with tasks run directly ---------------------


@pytest.fixture
def running_guest(
    direct_tasks: list[str], demo_template: Any, spice_tls: tls.PkiPaths
) -> Iterator[tuple[Any, Desktop]]:
    owner = UserFactory.create(role=Role.STUDENT, username="ana")
    desktop = desktop_create(actor=owner, template=demo_template, name="Ana's viewer test")
    try:
        desktop.refresh_from_db()
        assert desktop.status == DesktopStatus.STOPPED, desktop.status_reason
        desktop_start(actor=owner, desktop=desktop)
        desktop.refresh_from_db()
        assert desktop.status == DesktopStatus.STARTED, desktop.status_reason
        log = serial_log_path(desktop)
        wait_for(
            lambda: log.exists() and GUEST_READY_MARKER in log.read_text(errors="replace"),
            180,  # about 3 s on an idle machine; far more beside other tests' guests
            "the guest to boot",
        )
        yield owner, desktop
    finally:
        libvirt_driver.undefine_domain(SYSTEM_URI, desktop.domain_name)


def warn_about_time(owner: Any, desktop: Desktop, chromium: Any) -> None:
    """A time-limit warning sent to the owner's status channel shows on the viewer page
    (sent again each second until the page's channel, opened after the screen, listens)."""
    from selenium.webdriver.common.by import By

    from desktops.services.transitions import broadcast_status_payloads, desktop_status_payload

    warning = f"“{desktop.name}” shuts down in 4 min (time limit): save your work."
    payload = {**desktop_status_payload(desktop), "warning": warning}
    banner = chromium.find_element(By.ID, "time-warning")
    deadline = time.monotonic() + 20
    while not banner.is_displayed() and time.monotonic() < deadline:
        broadcast_status_payloads([(owner.pk, payload)])
        time.sleep(1)
    assert banner.is_displayed() and banner.text == warning


def test_chromium_shows_the_guests_console_to_its_owner_only_and_reconnects_after_a_blip(
    running_guest: tuple[Any, Desktop], platform_server: AsgiServer, chromium: Any
) -> None:
    owner, desktop = running_guest
    assert GUEST_READY_MARKER in vga_text(desktop), "the guest's screen lacks the marker"
    sign_in(chromium, platform_server, owner)
    chromium.get(f"{platform_server.base_url}/desktops/{desktop.pk}/viewer/")

    status = wait_for_state(chromium, "connected")
    assert status == f"Connected to QEMU ({desktop.domain_name})"
    # noVNC draws the screen a moment after connecting: wait until the canvas is the screen.
    wait_for(lambda: canvas_matches_screen(chromium, desktop) > 0.99, 30, "the canvas")
    assert direct_framebuffer(desktop).non_background_ratio() > 0.005  # text, not a blank
    ARTIFACTS.mkdir(exist_ok=True)
    chromium.save_screenshot(str(ARTIFACTS / "viewer-chromium.png"))
    from selenium.webdriver.common.by import By

    assert chromium.find_element(By.ID, "ctrl-alt-del").is_enabled()

    # The page's status channel carries a time limit's warning over the screen.
    warn_about_time(owner, desktop, chromium)

    # A network blip (the screen's websocket and the page's status channel): the page gets
    # a new single-use token and connects again by itself.
    assert platform_server.drop_websockets() == 2
    wait_for(lambda: page_state(chromium)[0] != "connected", 10, "the viewer to notice")
    assert wait_for_state(chromium, "connected") == f"Connected to QEMU ({desktop.domain_name})"
    tokens = ViewerToken.objects.filter(desktop=desktop, protocol=ViewerProtocol.BROWSER_VNC)
    assert tokens.count() == 2 and not tokens.filter(used_at__isnull=True).exists()
    wait_for(lambda: canvas_matches_screen(chromium, desktop) > 0.99, 30, "the canvas again")

    # Another student, in the same browser, is told there is no such desktop and sees nothing.
    chromium.delete_all_cookies()
    sign_in(chromium, platform_server, UserFactory.create(role=Role.STUDENT, username="ben"))
    chromium.get(f"{platform_server.base_url}/desktops/{desktop.pk}/viewer/")
    state, status = page_state(chromium)
    assert state == "refused" and "No such desktop" in status
    assert desktop.graphics_password not in chromium.page_source


def test_the_websocket_proxy_carries_the_real_screen_and_refuses_a_reused_token(
    running_guest: tuple[Any, Desktop], platform_server: AsgiServer
) -> None:
    from websockets.exceptions import ConnectionClosed

    owner, desktop = running_guest
    client = Client()
    client.force_login(owner)
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    access = viewer_token_issue(actor=owner, desktop=desktop)
    url = f"ws://127.0.0.1:{platform_server.port}{access.websocket_path}"
    origin = platform_server.base_url

    async def through_proxy() -> Any:
        client = RfbClient(await WebsocketTransport.open(url, cookie=cookie, origin=origin))
        framebuffer = await client.handshake("")  # no password: the proxy signed in itself
        assert client.security_types == {1}  # the browser is offered "None" only
        await client.full_frame()
        await client.close()
        return framebuffer

    proxied = asyncio.run(through_proxy())
    assert proxied.name == f"QEMU ({desktop.domain_name})"
    # The same screen as QEMU gives directly, but for the blinking cursor.
    assert same_pixels(proxied.pixels, direct_framebuffer(desktop).pixels) > 0.99

    async def reuse() -> tuple[Any, int]:
        transport = await WebsocketTransport.open(url, cookie=cookie, origin=origin)
        notice = json.loads(await transport.connection.recv())
        try:
            await transport.connection.recv()
        except ConnectionClosed as closed:
            assert closed.rcvd is not None
            return notice, closed.rcvd.code
        raise AssertionError("a reused token reached the screen")

    notice, code = asyncio.run(reuse())
    assert code == 4403 == notice["code"]
    assert "already used" in notice["message"]


# --- the native client -------------------------------------------------------------------------


def run_remote_viewer(
    vv_path: Path, wanted: list[str], timeout: float = 60, *, any_of: bool = False
) -> str:
    """Run remote-viewer on a virtual screen until every `wanted` text (with `any_of`, one
    of them) is in its log (and a moment more for the channels to settle), then stop it."""
    command = ["xvfb-run", "-a", "-s", "-screen 0 1024x768x24", "remote-viewer", "--debug"]
    process = subprocess.Popen(
        [*command, str(vv_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "G_MESSAGES_DEBUG": "all", "SPICE_DEBUG": "1"},
    )
    lines: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        with process.stdout:
            lines.extend(process.stdout)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if (any if any_of else all)(text in "".join(lines) for text in wanted):
                time.sleep(2)
                break
            time.sleep(0.2)
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
        reader.join(5)
    return "".join(lines)


@pytest.fixture
def spice_gateway(settings: Any) -> Iterator[int]:
    """The platform's SPICE gateway on a port of its own (`ISARD_GATEWAY_PORT`, not shared
    with HTTPS: the student-network test covers that), named by the .vv files."""
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(gateway_start(host="127.0.0.1", port=0))
    port = int(server.sockets[0].getsockname()[1])
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    settings.ISARD_GATEWAY_SHARED = False
    settings.ISARD_GATEWAY_PORT = port
    settings.ISARD_PUBLIC_HOST = "127.0.0.1"
    yield port

    async def shut() -> None:  # tunnels remote-viewer left open end with it
        server.close()
        tunnels = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tunnels:
            task.cancel()
        await asyncio.gather(*tunnels, return_exceptions=True)
        await server.wait_closed()

    asyncio.run_coroutine_threadsafe(shut(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def test_remote_viewer_opens_the_vv_file_over_tls_with_usb_redirection(
    running_guest: tuple[Any, Desktop],
    spice_tls: tls.PkiPaths,
    tmp_path: Path,
    spice_gateway: int,
) -> None:
    if not (shutil.which("remote-viewer") and shutil.which("xvfb-run")):
        pytest.fail("needs Debian's virt-viewer and xvfb (`./isardctl test` installs them)")
    owner, desktop = running_guest
    ports = libvirt_driver.graphics_ports(SYSTEM_URI, desktop.domain_name)
    assert ports.spice_tls_port is not None, "libvirt gave the guest no SPICE TLS port"

    # OpenSSL itself verifies the TLS port against the platform CA and the host's name.
    context = ssl.create_default_context(cadata=tls.ca_bundle_pem(paths=spice_tls))
    with (
        socket.create_connection(("127.0.0.1", ports.spice_tls_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as connection,
    ):
        der = connection.getpeercert(binary_form=True)
    assert der is not None
    assert x509.load_der_x509_certificate(der) == tls.load_certificate(spice_tls.host_cert)

    vv = viewer_vv_build(actor=owner, desktop=desktop)
    # The file's password is the guest's SPICE password now, valid until the file's expiry.
    secure_xml = subprocess.run(
        ["virsh", "-c", SYSTEM_URI, "dumpxml", "--security-info", desktop.domain_name],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    spice = ET.fromstring(secure_xml).find("./devices/graphics[@type='spice']")
    assert spice is not None
    assert f"password={spice.get('passwd')}\n" in vv.content
    assert spice.get("passwdValidTo") == f"{vv.expires_at:%Y-%m-%dT%H:%M:%S}"
    path = tmp_path / vv.filename
    path.write_text(vv.content)
    usb_devices = desktop.hardware.usb_redirect_devices
    usb_channels = [f"usbredir-9:{index}: channel up" for index in range(usb_devices)]
    log = run_remote_viewer(path, ["main channel: opened", "SpiceDisplayChannel", *usb_channels])
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "remote-viewer.log").write_text(log)
    tail = log[-4000:]
    assert f"Using TLS, port {ports.spice_tls_port}" in log, tail
    assert "verify_subject: subjects match" in log, tail
    assert "main channel: opened" in log, tail
    assert usb_devices == 2
    assert all(channel in log for channel in usb_channels), tail
    assert f"usbredir-9:{usb_devices}:" not in log
    # Every channel (main, display, inputs, cursor, the USB ones) went over TLS.
    for channel in ("main-1:0", "display-2:0", "usbredir-9:0", "usbredir-9:1"):
        assert f"{channel}: Using TLS, port {ports.spice_tls_port}" in log, tail
    assert "Using plain text" not in log
    assert not path.exists(), "delete-this-file=1 should have removed the .vv file"
    # ...and every one of them went through the platform's SPICE gateway, which the .vv
    # file named, authenticated with its credential (spice-gtk sends Basic proxy auth).
    assert "proxy=http://" in vv.content and f"@127.0.0.1:{spice_gateway}\n" in vv.content
    tunnels = DesktopEvent.objects.filter(
        desktop=desktop, reason__startswith="SPICE channel opened through the gateway"
    ).count()
    assert tunnels >= 4 + usb_devices, (tunnels, tail)


def test_a_vv_file_whose_password_expired_is_refused_by_the_spice_server(
    running_guest: tuple[Any, Desktop],
    spice_tls: tls.PkiPaths,
    tmp_path: Path,
    settings: Any,
    spice_gateway: int,
) -> None:
    """QEMU's SPICE server itself enforces the file's expiry (the ticket's lifetime)."""
    if not (shutil.which("remote-viewer") and shutil.which("xvfb-run")):
        pytest.fail("needs Debian's virt-viewer and xvfb (`./isardctl test` installs them)")
    owner, desktop = running_guest
    settings.ISARD_SPICE_TICKET_SECONDS = 2
    expired = viewer_vv_build(actor=owner, desktop=desktop)
    path = tmp_path / expired.filename
    path.write_text(expired.content)
    wait_for(lambda: time.time() > expired.expires_at.timestamp() + 1, 10, "the expiry")
    refused = "main channel: auth failure"
    log = run_remote_viewer(path, ["main channel: opened", refused], timeout=30, any_of=True)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "remote-viewer-expired.log").write_text(log)
    # SPICE's link reply 7 is SPICE_LINK_ERR_PERMISSION_DENIED: the server said no.
    assert "main-1:0: link result: reply 7" in log, log[-4000:]
    assert refused in log and "main channel: opened" not in log

    # The same client with a file issued now gets in: it was the expiry, nothing else.
    settings.ISARD_SPICE_TICKET_SECONDS = 120
    fresh = viewer_vv_build(actor=owner, desktop=desktop)
    path.write_text(fresh.content)
    log = run_remote_viewer(path, ["main channel: opened", refused], timeout=60, any_of=True)
    assert "main channel: opened" in log and refused not in log, log[-4000:]


def test_a_real_guest_without_an_agent_gets_no_rdp_file_but_a_clear_reason(
    running_guest: tuple[Any, Desktop], caplog: pytest.LogCaptureFixture
) -> None:
    owner, desktop = running_guest
    # The domain has the agent's channel (libvirt chose the socket), but the demo guest runs
    # no agent and is on no libvirt network: no source has an address, and we say why.
    live = ET.fromstring(libvirt_driver.domain_xml(SYSTEM_URI, desktop.domain_name))
    [agent] = [
        channel
        for channel in live.iter("channel")
        if channel.find("target[@name='org.qemu.guest_agent.0']") is not None
    ]
    source = agent.find("source")
    assert source is not None and source.get("path"), ET.tostring(agent, encoding="unicode")

    # No agent answers (libvirt knows the guest never opened the port), no lease, no ARP
    # entry: each source says so and the lookup ends empty. (How long that takes is a
    # measurement, not a test: see README, "RDP".)
    caplog.set_level("DEBUG", logger="hypervisors.drivers.libvirt_driver")
    assert (
        libvirt_driver.domain_ip_addresses(SYSTEM_URI, desktop.domain_name, sources=("agent",))
        == []
    )
    assert libvirt_driver.domain_ip_addresses(SYSTEM_URI, desktop.domain_name) == []
    assert "no addresses from the agent" in caplog.text

    client = Client()
    client.force_login(owner)
    response = client.get(f"/desktops/{desktop.pk}/viewer.rdp")
    assert response.status_code == 409
    assert response.content.decode() == (
        f"The desktop “{desktop.name}” has not reported an IP address: install the QEMU guest "
        "agent in the guest (or in its template), or wait until it has finished booting and "
        "try again."
    )
