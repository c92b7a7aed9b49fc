"""What the browser tests share: the platform in Daphne, headless Chromium, the screen.

The server is the real ASGI application in Daphne, in a thread of the test process so it
shares the test database (the tests are transactional so its threads see committed rows).
Chromium is Debian's, driven by Selenium through Debian's chromedriver.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import Client

from desktops.models import Desktop
from hypervisors.drivers import libvirt_driver
from tests.integration.conftest import SYSTEM_URI
from tests.integration.test_viewers_rfb import RfbClient, TcpTransport

ARTIFACTS = Path(settings.BASE_DIR) / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


class AsgiServer:
    """The real ASGI application (HTTP and websockets) in Daphne, on a loopback port."""

    _instance: AsgiServer | None = None

    def __init__(self) -> None:
        from daphne.server import Server
        from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
        from django.core.asgi import get_asgi_application

        from isard.asgi import application as platform

        # Static files (noVNC) straight from static/, as `runserver` serves them, so the
        # test needs no collectstatic.
        http = ASGIStaticFilesHandler(get_asgi_application())
        websocket = platform.application_mapping["websocket"]
        #: The websockets' origin check (channels' OriginValidator, from ALLOWED_HOSTS).
        self.websocket_origins = websocket

        async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
            handler = websocket if scope["type"] == "websocket" else http
            await handler(scope, receive, send)

        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        self.port = listener.getsockname()[1]
        listener.close()
        ready = threading.Event()
        self.server = Server(
            application=application,
            endpoints=[f"tcp:port={self.port}:interface=127.0.0.1"],
            signal_handlers=False,
            verbosity=0,
            ready_callable=ready.set,
        )
        # Twisted's reactor cannot be restarted: one server for the whole test process.
        threading.Thread(target=self.server.run, name="daphne", daemon=True).start()
        if not ready.wait(15):
            raise RuntimeError("Daphne did not start")

    def listen_shared_tls(
        self, host: str, *, cert_file: Path, key_file: Path, gateway_socket: Path
    ) -> tuple[int, Callable[[], None]]:
        """Also serve HTTPS and wss on `host`, sharing the port with the SPICE gateway's
        CONNECTs as a web worker does (`isard.port_sharing`). Returns the port (a free one)
        and the function that stops serving it."""
        from twisted.internet import reactor, threads
        from twisted.protocols.tls import TLSMemoryBIOFactory

        from isard.port_sharing import SharedTLSPort
        from isard.web_worker import twisted_tls_options

        listening = socket.socket()
        listening.bind((host, 0))
        listening.listen(128)
        listening.setblocking(False)

        def adopt() -> SharedTLSPort:
            factory = TLSMemoryBIOFactory(
                twisted_tls_options(cert_file, key_file), False, self.server.http_factory
            )
            port = SharedTLSPort(reactor, listening, factory, gateway_socket)
            port.start()
            return port

        shared = threads.blockingCallFromThread(reactor, adopt)
        port = int(listening.getsockname()[1])
        return port, lambda: threads.blockingCallFromThread(reactor, shared.stop)

    @classmethod
    def get(cls) -> AsgiServer:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def drop_websockets(self) -> int:
        """Cut every websocket's TCP connection, as a network blip would."""
        from twisted.internet import reactor

        protocols = [p for p in list(self.server.connections) if hasattr(p, "sendMessage")]
        done = threading.Event()

        def abort() -> None:
            for protocol in protocols:
                protocol.transport.abortConnection()
            done.set()

        reactor.callFromThread(abort)
        done.wait(5)
        return len(protocols)


def vga_text_on(uri: str, domain: str) -> str:
    """The characters in the guest's VGA text memory, read through QEMU's monitor.

    All 32 KiB of it, not the first screenful: Linux's vgacon scrolls by moving the
    display's start address through that memory, so once a guest has printed more than
    a screen (a kernel warning under a loaded TCG host is enough) the visible screen no
    longer begins at 0xb8000.
    """
    output = subprocess.run(
        ["virsh", "-c", uri, "qemu-monitor-command", domain, "--hmp", "xp /32768bx 0xb8000"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    values = [int(token, 16) for line in output.splitlines() for token in line.split()[1:]]
    return "".join(chr(value) if 32 <= value < 127 else " " for value in values[0::2])


def vga_text(desktop: Desktop) -> str:
    """The characters in the VGA text memory of a desktop on the local system daemon."""
    return vga_text_on(SYSTEM_URI, desktop.domain_name)


def direct_framebuffer(desktop: Desktop) -> Any:
    """The guest's screen read straight from QEMU's VNC server (no proxy, no browser)."""
    ports = libvirt_driver.graphics_ports(SYSTEM_URI, desktop.domain_name)
    assert ports.vnc_port is not None

    async def read() -> Any:
        client = RfbClient(await TcpTransport.open("127.0.0.1", ports.vnc_port or 0))
        await client.handshake(desktop.graphics_password)
        framebuffer = await client.full_frame()
        await client.close()
        return framebuffer

    return asyncio.run(read())


def chromium_options(profile: Path, width: int, height: int, *extra: str) -> Any:
    """Headless Debian Chromium in `profile`, at a window size, with `extra` flags."""
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        *extra,
    ):
        options.add_argument(flag)
    return options


def new_chromium(profile: Path, width: int = 1024, height: int = 700) -> Any:
    """Headless Chromium in a fresh profile, at a window size (a laptop's, a phone's)."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("needs Debian's chromium and chromium-driver (`./isardctl test` installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = chromium_options(profile, width, height)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    return driver


def sign_in(driver: Any, server: AsgiServer, user: Any) -> None:
    client = Client()
    client.force_login(user)
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    driver.get(f"{server.base_url}/no-such-page/")  # a cookie needs a page of its origin
    driver.add_cookie({"name": settings.SESSION_COOKIE_NAME, "value": session, "path": "/"})


def page_state(driver: Any) -> tuple[str, str]:
    from selenium.webdriver.common.by import By

    body = driver.find_element(By.TAG_NAME, "body")
    return body.get_attribute("data-state"), driver.find_element(By.ID, "status").text


def wait_for_state(driver: Any, state: str, timeout: float = 45) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.2).until(
        lambda d: page_state(d)[0] == state,
        message=f"viewer never became {state}",
    )
    return page_state(driver)[1]


CANVAS_PIXELS = """
const canvas = document.querySelector("#screen canvas");
const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
let text = "";
for (let i = 0; i < data.length; i += 0x8000) {
  text += String.fromCharCode.apply(null, data.subarray(i, i + 0x8000));
}
return [canvas.width, canvas.height, btoa(text)];
"""


def same_pixels(one: bytes | bytearray, other: bytes | bytearray) -> float:
    """Share of 4-byte pixels whose RGB bytes are equal (0 when the sizes differ)."""
    if len(one) != len(other) or not one:
        return 0.0
    same = sum(
        1
        for offset in range(0, len(one), 4)
        if one[offset : offset + 3] == other[offset : offset + 3]
    )
    return same / (len(one) // 4)


def canvas_matches_screen(driver: Any, desktop: Desktop) -> float:
    """Share of the canvas's pixels equal to QEMU's own framebuffer (RGB)."""
    width, height, encoded = driver.execute_script(CANVAS_PIXELS)
    framebuffer = direct_framebuffer(desktop)
    if (width, height) != (framebuffer.width, framebuffer.height):
        return 0.0
    return same_pixels(base64.b64decode(encoded), framebuffer.pixels)
