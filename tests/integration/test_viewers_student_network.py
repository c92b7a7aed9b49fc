"""Issue 14 on a small network of this machine: a student's PC that reaches only the platform.

A network namespace stands for the student's PC, joined to the machine by a veth pair on a
/30 of its own and no other route: from it only the platform's public address answers. The
SPICE gateway listens on that address. Inside the namespace, Debian's remote-viewer (on an
Xvfb of the namespace) opens a real guest's `.vv` file: every channel is a CONNECT tunnel
through the gateway over TLS, and the X screen shows the guest's screen, pixel for pixel.
The guest's SPICE port itself is out of the student's reach, and the gateway refuses to
tunnel anywhere else (the hypervisor's SSH, another desktop's display, any address).

Needs root (`ip netns`). The logs are kept in `test-artifacts/`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from accounts.choices import Role
from accounts.tests.factories import UserFactory
from desktops.choices import DesktopStatus
from desktops.models import Desktop, DesktopEvent
from desktops.services.lifecycle import desktop_start
from desktops.services.provisioning import desktop_create
from desktops.viewer.files import viewer_vv_build
from desktops.viewer.gateway import gateway_take_handoffs
from hypervisors import tls
from hypervisors.drivers import libvirt_driver
from hypervisors.guest_image import GUEST_READY_MARKER
from tests.integration.browser import ARTIFACTS, direct_framebuffer, vga_text, vga_text_on
from tests.integration.conftest import SYSTEM_URI, wait_for
from tests.integration.test_viewers import running_guest  # noqa: F401  (a fixture)
from tests.integration.test_viewers_tls_hosts import (  # noqa: F401  (fixtures)
    module_pki,
    tls_daemons,
    tls_hosts,
)

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

#: A CONNECT (or a bare TCP connect, target "-") from inside the student's namespace.
PROBE = r"""
import base64, socket, sys
host, port, target, auth = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
try:
    connection = socket.create_connection((host, port), timeout=5)
except OSError as error:
    print("unreachable", type(error).__name__)
    sys.exit()
if target == "-":
    print("connected")
    sys.exit()
basic = base64.b64encode(auth.encode()).decode()
head = f"CONNECT {target} HTTP/1.0\r\nProxy-Authorization: Basic {basic}\r\n\r\n"
connection.sendall(head.encode())
print(connection.makefile("rb").readline().decode().strip())
"""


#: An HTTPS GET from inside the student's namespace: the status line.
HTTPS_PROBE = r"""
import http.client, ssl, sys
host, port, cafile, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
connection = http.client.HTTPSConnection(
    host, port, context=ssl.create_default_context(cafile=cafile), timeout=10
)
connection.request("GET", path)
print(connection.getresponse().status)
"""


def ip(*arguments: str) -> str:
    return subprocess.run(["ip", *arguments], capture_output=True, text=True, check=True).stdout


@dataclass(frozen=True)
class StudentNetwork:
    namespace: str
    platform_address: str  # the root namespace's end of the veth pair
    student_address: str

    def command(self, *arguments: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *arguments]

    def https_get(self, host: str, port: int, ca_file: Path, path: str) -> str:
        return subprocess.run(
            self.command(sys.executable, "-c", HTTPS_PROBE, host, str(port), str(ca_file), path),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=30,
        ).stdout.strip()

    def probe(self, host: str, port: int, target: str = "-", auth: str = "") -> str:
        return subprocess.run(
            self.command(sys.executable, "-c", PROBE, host, str(port), target, auth),
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()


@pytest.fixture
def student_network() -> Iterator[StudentNetwork]:
    """`isard-student-<random>`, joined to this machine by 10.77.<n>.0/30 and nothing else."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.fail("needs root and iproute2 (`ip netns`)")
    used = ip("-4", "-o", "addr")
    subnet = next(
        n for n in secrets.SystemRandom().sample(range(1, 255), 254) if f" 10.77.{n}." not in used
    )
    tag = secrets.token_hex(3)
    network = StudentNetwork(f"isard-student-{tag}", f"10.77.{subnet}.1", f"10.77.{subnet}.2")
    root_end, student_end = f"isr-{tag}", f"iss-{tag}"  # interface names: 15 bytes at most
    try:
        ip("netns", "add", network.namespace)
        ip("link", "add", root_end, "type", "veth", "peer", "name", student_end)
        ip("link", "set", student_end, "netns", network.namespace)
        ip("addr", "add", f"{network.platform_address}/30", "dev", root_end)
        ip("link", "set", root_end, "up")
        inside = ("-n", network.namespace)
        ip(*inside, "addr", "add", f"{network.student_address}/30", "dev", student_end)
        ip(*inside, "link", "set", student_end, "up")
        ip(*inside, "link", "set", "lo", "up")
        # The link's own /30 is the only route the student has: no default route.
        routes = ip(*inside, "-4", "route")
        link_only = f"10.77.{subnet}.0/30 dev {student_end} proto kernel scope link src"
        assert routes.split() == [*link_only.split(), network.student_address], routes
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "student-network.txt").write_text(
            f"namespace {network.namespace}\n"
            + ip(*inside, "addr")
            + ip(*inside, "route")
            + ip("addr", "show", "dev", root_end)
        )
        yield network
    finally:
        subprocess.run(["ip", "link", "del", root_end], capture_output=True)
        subprocess.run(["ip", "netns", "del", network.namespace], capture_output=True)


@dataclass(frozen=True)
class Gateway:
    """The platform's one public port: HTTPS, wss and the SPICE gateway's CONNECTs."""

    port: int
    log: Path
    ca_file: Path
    cert_file: Path


@pytest.fixture
def student_gateway(
    settings: Any,
    student_network: StudentNetwork,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Gateway]:
    """The platform on its public address (the student's only reachable one), as
    `./isardctl up` serves it: HTTPS on one port, whose CONNECTs the web tier passes to the
    SPICE gateway (`isard.port_sharing`); the .vv files name that port. The gateway's log
    lines go to an artifact."""
    from tests.integration.browser import AsgiServer

    # First: starting it sets Django's logging up again, which would drop our handler.
    server = AsgiServer.get()
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / "student-network-gateway.log"
    handler = logging.FileHandler(log, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    viewer_logger = logging.getLogger("desktops.viewer")
    level = viewer_logger.level
    viewer_logger.setLevel(logging.INFO)
    viewer_logger.addHandler(handler)
    web_pki = tls.PkiPaths(tmp_path / "web-pki")
    tls.host_certificate_issue(
        paths=web_pki,
        names=tls.HostNames(dns=("isard.test",), addresses=(student_network.platform_address,)),
    )
    socket_path = Path(tempfile.mkdtemp(prefix="isard-gw-", dir="/tmp")) / "gateway.sock"
    loop = asyncio.new_event_loop()

    async def take() -> Any:
        return gateway_take_handoffs(socket_path)

    stop_taking = loop.run_until_complete(take())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    port, stop_serving = server.listen_shared_tls(
        student_network.platform_address,
        cert_file=web_pki.host_cert,
        key_file=web_pki.host_key,
        gateway_socket=socket_path,
    )
    settings.ISARD_TLS_PORT = port
    settings.ISARD_GATEWAY_SHARED = True
    settings.ISARD_GATEWAY_PORT = 0
    settings.ISARD_PUBLIC_PORT = 0
    settings.ISARD_PUBLIC_HOST = student_network.platform_address
    # As ISARD_ALLOWED_HOSTS would name it at start: the pages read the setting on each
    # request, the websockets' origin check took its list when the application was built.
    allowed = [*settings.ALLOWED_HOSTS, student_network.platform_address]
    settings.ALLOWED_HOSTS = allowed
    monkeypatch.setattr(server.websocket_origins, "allowed_origins", allowed)
    try:
        yield Gateway(port=port, log=log, ca_file=web_pki.ca_cert, cert_file=web_pki.host_cert)
    finally:
        stop_serving()
        # Tunnels remote-viewer left open end with it.
        asyncio.run_coroutine_threadsafe(stop_taking(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        socket_path.parent.rmdir()
        viewer_logger.removeHandler(handler)
        viewer_logger.setLevel(level)
        handler.close()


@pytest.fixture
def another_desktop(direct_tasks: list[str], demo_template: Any) -> Iterator[Desktop]:
    """A second student's running desktop: its display is a target the first may not reach."""
    ben = UserFactory.create(role=Role.STUDENT, username="ben")
    desktop = desktop_create(actor=ben, template=demo_template, name="Ben's desktop")
    try:
        desktop.refresh_from_db()
        desktop_start(actor=ben, desktop=desktop)
        desktop.refresh_from_db()
        assert desktop.status == DesktopStatus.STARTED, desktop.status_reason
        yield desktop
    finally:
        libvirt_driver.undefine_domain(SYSTEM_URI, desktop.domain_name)


# --- the student's screen --------------------------------------------------------------------


def stop_process_group(process: subprocess.Popen[Any]) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


@pytest.fixture
def student_screen(student_network: StudentNetwork, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An Xvfb started inside the student's namespace, its screen kept as an XWD file
    (`-fbdir`) to read pixels from. Returns (DISPLAY, the screen file)."""
    if not (shutil.which("remote-viewer") and shutil.which("Xvfb")):
        pytest.fail("needs Debian's virt-viewer and xvfb (`./isardctl test` installs them)")
    screen_dir = tmp_path / "screen"
    screen_dir.mkdir()
    read_end, write_end = os.pipe()
    process = subprocess.Popen(
        student_network.command(
            *("Xvfb", "-displayfd", str(write_end), "-screen", "0", "1280x1024x24"),
            *("-fbdir", str(screen_dir), "-nolisten", "tcp"),
        ),
        pass_fds=(write_end,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.close(write_end)
    try:
        with os.fdopen(read_end) as announced:
            display = announced.readline().strip()
        assert display.isdigit(), "Xvfb did not start"
        yield f":{display}", screen_dir / "Xvfb_screen0"
    finally:
        stop_process_group(process)


def screen_rgb(path: Path) -> tuple[int, int, bytes]:
    """Width, height and RGB bytes (3 a pixel) of Xvfb's 24-bit screen in XWD format."""
    data = path.read_bytes()
    fields = struct.unpack(">25I", data[:100])
    header_size, depth, width, height = fields[0], fields[3], fields[4], fields[5]
    byte_order, bits_per_pixel, bytes_per_line = fields[7], fields[11], fields[12]
    ncolors = fields[19]
    assert depth == 24 and bits_per_pixel == 32, fields
    start = header_size + 12 * ncolors
    rows = []
    for y in range(height):
        row = data[start + y * bytes_per_line : start + y * bytes_per_line + width * 4]
        if byte_order == 0:  # LSBFirst: B, G, R, X
            red, green, blue = row[2::4], row[1::4], row[0::4]
        else:
            red, green, blue = row[1::4], row[2::4], row[3::4]
        rgb = bytearray(width * 3)
        rgb[0::3], rgb[1::3], rgb[2::3] = red, green, blue
        rows.append(bytes(rgb))
    return width, height, b"".join(rows)


def framebuffer_rgb(desktop: Desktop) -> tuple[int, int, bytes]:
    """The guest's screen as QEMU's VNC server gives it (a guest of the local host)."""
    guest = direct_framebuffer(desktop)
    rgb = bytearray(guest.width * guest.height * 3)
    rgb[0::3], rgb[1::3], rgb[2::3] = guest.pixels[0::4], guest.pixels[1::4], guest.pixels[2::4]
    return guest.width, guest.height, bytes(rgb)


def guest_on_screen(path: Path, guest_screen: Callable[[], tuple[int, int, bytes]]) -> float:
    """Share of the guest's pixels (`guest_screen`: width, height, RGB, read from QEMU)
    shown 1:1 somewhere on the X screen, at the place where the guest's first row of text
    is found; 0 if it is nowhere."""
    guest_width, guest_height, guest_rgb = guest_screen()
    stride = guest_width * 3
    guest_rows = [bytes(guest_rgb[y * stride : (y + 1) * stride]) for y in range(guest_height)]
    # The first row that is not one colour: a row through text.
    marked = next((y for y, row in enumerate(guest_rows) if len(set(row)) > 1), None)
    if marked is None or not path.exists():
        return 0.0
    width, height, screen = screen_rgb(path)
    screen_stride = width * 3
    for y in range(marked, height - guest_height + marked + 1):
        line = screen[y * screen_stride : (y + 1) * screen_stride]
        x = line.find(guest_rows[marked])
        if x < 0 or x % 3:
            continue
        top = y - marked
        same = sum(
            screen[(top + row) * screen_stride + x : (top + row) * screen_stride + x + stride]
            == guest_rows[row]
            for row in range(guest_height)
        )
        return same / guest_height
    return 0.0


def remote_viewer_through_the_gateway(
    network: StudentNetwork,
    screen: tuple[str, Path],
    vv_path: Path,
    guest_screen: Callable[[], tuple[int, int, bytes]],
    *,
    usb_devices: int,
    tls_port: int,
    artifact: str,
) -> tuple[str, float]:
    """Open `vv_path` in remote-viewer on the student's PC until every channel is up and
    the X screen shows the guest; check each went over TLS to the guest's port. Returns
    remote-viewer's log and the share of the guest's pixels on the student's screen."""
    display, screen_file = screen
    wanted = [
        "main channel: opened",
        "SpiceDisplayChannel",
        *(f"usbredir-9:{index}: channel up" for index in range(usb_devices)),
    ]
    process = subprocess.Popen(
        network.command("remote-viewer", "--debug", str(vv_path)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "DISPLAY": display, "G_MESSAGES_DEBUG": "all", "SPICE_DEBUG": "1"},
    )
    lines: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        with process.stdout:
            lines.extend(process.stdout)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    shown = 0.0
    try:
        wait_for(
            lambda: process.poll() is not None or all(text in "".join(lines) for text in wanted),
            90,
            "remote-viewer's channels",
        )

        def screen_shows_guest() -> bool:
            nonlocal shown
            shown = guest_on_screen(screen_file, guest_screen)
            return shown > 0.99 or process.poll() is not None

        wait_for(screen_shows_guest, 30, "the guest on the student's screen")
    finally:
        if screen_file.exists():
            shutil.copy(screen_file, ARTIFACTS / f"{artifact}-screen.xwd")
        stop_process_group(process)
        reader.join(5)
        log = "".join(lines)
        (ARTIFACTS / f"{artifact}-remote-viewer.log").write_text(log)
    tail = log[-4000:]
    # Every channel went over TLS to the guest's port, through the gateway.
    assert all(text in log for text in wanted), tail
    channels = ("main-1:0", "display-2:0", "inputs-3:0")
    for channel in (*channels, *(f"usbredir-9:{index}" for index in range(usb_devices))):
        assert f"{channel}: Using TLS, port {tls_port}" in log, tail
    assert "verify_subject: subjects match" in log, tail
    assert "Using plain text" not in log
    return log, shown


# --- the test --------------------------------------------------------------------------------


def test_a_student_pc_reaches_a_real_guest_only_through_the_gateway(
    running_guest: tuple[Any, Desktop],  # noqa: F811
    another_desktop: Desktop,
    spice_tls: tls.PkiPaths,
    student_network: StudentNetwork,
    student_gateway: Gateway,
    student_screen: tuple[str, Path],
    tmp_path: Path,
) -> None:
    owner, desktop = running_guest
    platform, student = student_network.platform_address, student_network.student_address
    ports = libvirt_driver.graphics_ports(SYSTEM_URI, desktop.domain_name)
    assert ports.spice_tls_port is not None, "libvirt gave the guest no SPICE TLS port"
    tls_port = ports.spice_tls_port

    # The student reaches the gateway, and neither the guest's SPICE port (on this machine's
    # loopback) nor any other network.
    assert student_network.probe(platform, student_gateway.port) == "connected"
    # ...the same port the pages are served on, over HTTPS.
    https = student_network.https_get(
        platform, student_gateway.port, student_gateway.ca_file, "/health/"
    )
    assert https in ("200", "503"), https
    refused, no_route = "unreachable ConnectionRefusedError", "unreachable OSError"
    assert student_network.probe("127.0.0.1", tls_port) == refused  # its own loopback
    assert student_network.probe(platform, tls_port) == refused
    assert student_network.probe("192.0.2.1", 80) == no_route
    with socket.create_connection(("127.0.0.1", tls_port), timeout=5):
        pass  # ...while from the machine itself the port answers

    vv = viewer_vv_build(actor=owner, desktop=desktop)
    proxy = re.search(r"^proxy=http://([0-9a-f]+):([^@\s]+)@([^:\s]+):(\d+)$", vv.content, re.M)
    assert proxy is not None, vv.content
    assert proxy.group(3, 4) == (platform, str(student_gateway.port))
    credential = f"{proxy.group(1)}:{proxy.group(2)}"
    vv_path = tmp_path / vv.filename
    vv_path.write_text(vv.content)

    usb_devices = desktop.hardware.usb_redirect_devices
    assert usb_devices == 2
    _, shown = remote_viewer_through_the_gateway(
        student_network,
        student_screen,
        vv_path,
        lambda: framebuffer_rgb(desktop),
        usb_devices=usb_devices,
        tls_port=tls_port,
        artifact="student-network",
    )
    # The student's screen is the guest's, and the guest's screen holds its ready line.
    assert shown > 0.99, shown
    assert GUEST_READY_MARKER in vga_text(desktop)
    gateway_log = student_gateway.log.read_text()
    opened = re.findall(
        rf"gateway tunnel opened: desktop={desktop.pk} .* target=127\.0\.0\.1:{tls_port} "
        rf"client={re.escape(student)}$",
        gateway_log,
        re.M,
    )
    assert len(opened) >= 4 + usb_devices, gateway_log
    events = DesktopEvent.objects.filter(
        desktop=desktop, reason=f"SPICE channel opened through the gateway from {student}"
    )
    assert events.count() == len(opened)

    # With the same valid credential, the gateway tunnels to nothing else.
    other_ports = libvirt_driver.graphics_ports(SYSTEM_URI, another_desktop.domain_name)
    assert other_ports.spice_tls_port is not None
    with socket.create_connection(("127.0.0.1", other_ports.spice_tls_port), timeout=5):
        pass  # Ben's display is there: refusing it is the gateway's decision
    for target in (
        f"{platform}:22",  # the hypervisor's SSH (this machine), by its public address
        "127.0.0.1:22",
        f"127.0.0.1:{other_ports.spice_tls_port}",  # another desktop's display
        "192.0.2.1:80",  # an arbitrary address
    ):
        answer = student_network.probe(platform, student_gateway.port, target, credential)
        assert answer == "HTTP/1.1 403 Forbidden", (target, answer)
    granted = student_network.probe(
        platform, student_gateway.port, f"127.0.0.1:{tls_port}", credential
    )
    assert granted == "HTTP/1.1 200 Connection established"  # the credential was valid
    # Each refusal is logged with the student's address (and kept in the artifact).
    refusals = re.findall(
        rf"viewer refused \(wrong-target\): user=ana desktop={desktop.pk} "
        rf"client={re.escape(student)}: ",
        student_gateway.log.read_text(),
    )
    assert len(refusals) == 4, student_gateway.log.read_text()


# --- the browser on the student's PC ---------------------------------------------------------


@pytest.fixture
def student_chromium(
    student_network: StudentNetwork, student_gateway: Gateway, tmp_path: Path
) -> Iterator[Any]:
    """Chromium on the student's PC: Debian's chromedriver started inside the namespace,
    driven from here over the veth link (chromedriver allows only the platform's address).
    It trusts the platform's HTTPS certificate by its key (`--ignore-certificate-errors-
    spki-list`, Chromium's way to pin one certificate without a system CA store)."""
    import base64
    import hashlib
    import urllib.request

    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    from selenium import webdriver

    from tests.integration.browser import CHROMEDRIVER, chromium_options

    certificate = tls.load_certificate(student_gateway.cert_file)
    assert certificate is not None
    spki = certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    pin = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    port = 9515  # the namespace's own: nothing else listens there
    driver_process = subprocess.Popen(
        student_network.command(
            CHROMEDRIVER, f"--port={port}", f"--allowed-ips={student_network.platform_address}"
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://{student_network.student_address}:{port}"

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/status", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    driver = None
    try:
        wait_for(ready, 30, "chromedriver in the student's namespace")
        options = chromium_options(
            tmp_path / "student-chromium",
            1024,
            700,
            f"--ignore-certificate-errors-spki-list={pin}",
        )
        driver = webdriver.Remote(command_executor=url, options=options)
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        if driver is not None:
            driver.quit()
        stop_process_group(driver_process)


def test_a_student_pc_opens_the_browser_viewer_and_a_direct_link_through_the_one_port(
    running_guest: tuple[Any, Desktop],  # noqa: F811
    student_network: StudentNetwork,
    student_gateway: Gateway,
    student_chromium: Any,
) -> None:
    from django.conf import settings as django_settings
    from django.test import Client
    from django.urls import reverse

    from desktops.viewer.direct_links import direct_link_create
    from tests.integration.browser import canvas_matches_screen, page_state, wait_for_state

    owner, desktop = running_guest
    origin = f"https://{student_network.platform_address}:{student_gateway.port}"
    student = student_network.student_address

    # Signed in: the page over HTTPS and the viewer's wss, on the one public port.
    client = Client()
    client.force_login(owner)
    session = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    student_chromium.get(f"{origin}/no-such-page/")  # a cookie needs a page of its origin
    student_chromium.add_cookie(
        {"name": django_settings.SESSION_COOKIE_NAME, "value": session, "path": "/"}
    )
    student_chromium.get(origin + reverse("desktop-viewer", args=[desktop.pk]))
    status = wait_for_state(student_chromium, "connected", timeout=60)
    assert status == f"Connected to QEMU ({desktop.domain_name})"
    wait_for(lambda: canvas_matches_screen(student_chromium, desktop) > 0.99, 30, "the canvas")
    student_chromium.save_screenshot(str(ARTIFACTS / "student-network-chromium-viewer.png"))

    # A direct link, never signed in, from the same PC.
    admin = UserFactory.create(role=Role.ADMIN, username="it-admin")
    issued = direct_link_create(actor=admin, desktop=desktop)
    student_chromium.delete_all_cookies()
    student_chromium.get(origin + issued.path)
    status = wait_for_state(student_chromium, "connected", timeout=60)
    assert status == f"Connected to QEMU ({desktop.domain_name})"
    wait_for(lambda: canvas_matches_screen(student_chromium, desktop) > 0.99, 30, "the canvas")
    student_chromium.save_screenshot(str(ARTIFACTS / "student-network-chromium-link.png"))
    history = list(desktop.events.order_by("pk").values_list("reason", flat=True))
    link = issued.link
    assert any(
        f"opened through direct link {link.pk} (made by it-admin) from {student}" in reason
        for reason in history
    ), history

    # A link that is not one: the same refusal as for a revoked or expired link.
    student_chromium.get(f"{origin}/v/not-a-link/")
    assert page_state(student_chromium)[0] == "refused"


# --- a desktop on another hypervisor ---------------------------------------------------------


def test_a_student_pc_opens_a_desktop_on_another_hypervisor_through_the_same_port(
    tls_hosts: tuple[Any, Any],  # noqa: F811
    tiny_image: Path,
    direct_tasks: list[str],
    student_network: StudentNetwork,
    student_gateway: Gateway,
    student_screen: tuple[str, Path],
    storage_root: Path,
    tmp_path: Path,
) -> None:
    """A hypervisor set up as `isard_certs --hypervisor` sets up a remote host (its own
    libvirt daemon, certificates from the platform CA, SPICE over TLS only): the .vv names
    its display and its certificate, and the gateway on the shared port tunnels there."""
    from templates_app.demo import demo_hardware_profile
    from templates_app.services.templates import template_register_base
    from tests.integration.test_viewers_tls_hosts import screendump

    template = template_register_base(
        name="Tiny Linux (demo)", image=tiny_image, hardware=demo_hardware_profile()
    )
    owner = UserFactory.create(role=Role.STUDENT, username="ana")
    desktop = desktop_create(actor=owner, template=template, name="Ana's remote desktop")
    desktop.refresh_from_db()
    assert desktop.disk is not None
    os.chmod(desktop.disk.path, 0o666)  # the daemons run qemu as users of their own
    desktop_start(actor=owner, desktop=desktop)
    desktop.refresh_from_db()
    assert desktop.status == DesktopStatus.STARTED, desktop.status_reason
    host = desktop.hypervisor
    assert host is not None and host.name in ("tls-a", "tls-b")
    wait_for(
        lambda: GUEST_READY_MARKER in vga_text_on(host.uri, desktop.domain_name),
        240,
        "the guest to boot",
    )
    ports = libvirt_driver.graphics_ports(host.uri, desktop.domain_name)
    assert ports.spice_tls_port is not None
    platform = student_network.platform_address
    assert student_network.probe(platform, ports.spice_tls_port).startswith("unreachable")

    vv = viewer_vv_build(actor=owner, desktop=desktop)
    proxy = re.search(r"^proxy=http://[0-9a-f]+:[^@\s]+@([^:\s]+):(\d+)$", vv.content, re.M)
    assert proxy is not None and proxy.group(1, 2) == (platform, str(student_gateway.port))
    assert f"tls-port={ports.spice_tls_port}" in vv.content
    vv_path = tmp_path / vv.filename
    vv_path.write_text(vv.content)
    dumps = storage_root / "screendumps"
    dumps.mkdir(exist_ok=True)
    dumps.chmod(0o777)  # QEMU writes them as the daemon's user
    _, shown = remote_viewer_through_the_gateway(
        student_network,
        student_screen,
        vv_path,
        lambda: screendump(host.uri, desktop.domain_name, dumps),
        usb_devices=desktop.hardware.usb_redirect_devices,
        tls_port=ports.spice_tls_port,
        artifact="student-network-remote-host",
    )
    assert shown > 0.99, shown
    opened = re.findall(
        rf"gateway tunnel opened: desktop={desktop.pk} .* target=127\.0\.0\.1:"
        rf"{ports.spice_tls_port} client={re.escape(student_network.student_address)}$",
        student_gateway.log.read_text(),
        re.M,
    )
    assert len(opened) >= 3 + desktop.hardware.usb_redirect_devices
