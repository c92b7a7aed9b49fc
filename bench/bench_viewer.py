"""The browser viewer against a direct VNC connection to QEMU, in the same run.

A real TCG guest runs; the platform runs in Daphne in its own process (as in the
Procfile). Two measurements, each against its bare baseline:

- **Open to first frame**: from asking for the viewer page (HTTP, which issues the token)
  through the websocket and the proxy (which does VNC authentication with QEMU itself and
  greets the client with security type None) to the last byte of the first full
  framebuffer update. Baseline: a TCP connection straight to QEMU's VNC
  port, the same handshake and the same first update. With `--browser`, also headless
  Chromium from navigation to noVNC's "connected" and a drawn canvas.
- **Throughput**: full-screen Raw updates requested back to back (non-incremental, so
  QEMU sends every pixel), through the proxy and directly, alternating rounds. Target:
  the proxy at least 0.8x of direct.

    .venv/bin/python bench/bench_viewer.py [--runs 10] [--frames 60] [--rounds 3]
                                           [--browser] [--tls] [--json out.json]

With `--tls` (root) the guest runs on a libvirt daemon of its own set up as a remote
hypervisor is (`vnc_tls`, client certificates required): the proxy's hop is VeNCrypt x509,
and the direct baseline signs in the same way (TLS, the proxy's certificate, the password).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
URI = "qemu:///system"
# Its own Redis database unless REDIS_URL names one (parallel runs must not share one).
REDIS_DB = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/6")
IMAGE_CACHE = Path("/var/tmp/isard-tests/cache")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def tiny_image() -> Path:
    """The demo guest, cached like the integration tests cache it."""
    import hypervisors.guest_image as builder
    from hypervisors.guest_image import build_tiny_linux

    digest = hashlib.sha256(Path(builder.__file__).read_bytes()).hexdigest()[:12]
    image = IMAGE_CACHE / f"tiny-linux-{digest}.qcow2"
    if not image.exists():
        IMAGE_CACHE.mkdir(parents=True, exist_ok=True)
        build_tiny_linux(image)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="viewer openings per path")
    parser.add_argument("--frames", type=int, default=60, help="full frames per round")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds per path")
    parser.add_argument("--browser", action="store_true", help="also time headless Chromium")
    parser.add_argument(
        "--tls", action="store_true", help="the guest's display needs TLS, as on a remote host"
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--renice",
        type=int,
        default=0,
        help="lower the nice value of this process, Daphne and the guest's QEMU by N (root): "
        "on a machine busy with other guests, so the proxy is measured rather than the "
        "scheduler's share of a crowded CPU",
    )
    options = parser.parse_args()
    if options.renice:
        os.nice(-options.renice)

    work = Path(tempfile.mkdtemp(prefix="isard-bench-viewer-", dir="/var/tmp"))
    work.chmod(0o755)
    os.environ["DATABASE_URL"] = f"sqlite:///{work / 'bench.sqlite3'}"
    os.environ["ISARD_STORAGE_ROOT"] = str(work / "storage")
    os.environ["REDIS_URL"] = REDIS_DB
    if options.tls:
        os.environ["ISARD_PKI_DIR"] = str(work / "pki")
        os.environ["ISARD_VIEWER_TLS"] = "required"
    os.environ["DJANGO_SETTINGS_MODULE"] = "isard.settings"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    daphne: subprocess.Popen[bytes] | None = None
    domain_name = ""
    uri = URI
    tls_host: Any = None
    try:
        from django.conf import settings
        from django.test import Client

        from accounts.tests.factories import UserFactory
        from desktops.fleet.monitoring import hypervisor_refresh
        from desktops.models import Desktop
        from desktops.services.domains import serial_log_path
        from desktops.services.lifecycle import desktop_start
        from desktops.services.provisioning import desktop_create
        from hypervisors.choices import Accelerator, HypervisorState
        from hypervisors.drivers import libvirt_driver
        from hypervisors.guest_image import GUEST_READY_MARKER
        from hypervisors.services.hosts import hypervisor_register
        from hypervisors.services.pools import storage_pools_ensure
        from isard.celery import app
        from templates_app.demo import demo_hardware_profile
        from templates_app.services.templates import template_register_base
        from tests.integration.test_viewers_rfb import (
            RfbClient,
            TcpTransport,
            WebsocketTransport,
        )

        # Tasks run here, at once, instead of through a Celery worker.
        app.loader.import_default_modules()
        from isard.core import tasks

        tasks.send_task = lambda call, **_: (
            None if call.options.get("countdown") else app.tasks[call.name](**call.kwargs)
        )
        storage_pools_ensure()
        host_name = "bench"
        if options.tls:
            from hypervisors import tls
            from tests.integration.test_multihost import SessionDaemon
            from tests.integration.test_viewers_tls_hosts import TLS_HOST_PORTS, TlsHost

            host_name = "bench-tls"
            tls_host = TlsHost(host_name, SessionDaemon("isardvt-a", *TLS_HOST_PORTS[0]))
            tls_host.daemon.prepare()
            tls_host.configure(tls.pki_paths())
            tls_host.daemon.kill_libvirtd()  # it reads qemu.conf when it starts
            tls_host.daemon.start()
            uri = tls_host.daemon.uri
            logs = work / "storage" / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            logs.chmod(0o777)  # that daemon's user writes the serial log
        host = hypervisor_register(name=host_name, uri=uri)
        host.accelerator, host.state = Accelerator.QEMU, HypervisorState.ONLINE
        host.save()
        hypervisor_refresh(hypervisor=host)
        template = template_register_base(
            name="bench", image=tiny_image(), hardware=demo_hardware_profile()
        )
        owner = UserFactory.create(username="bench")
        desktop = desktop_create(actor=owner, template=template, name="viewed")
        domain_name = desktop.domain_name
        if options.tls:
            desktop.refresh_from_db()
            assert desktop.disk is not None
            os.chmod(desktop.disk.path, 0o666)  # qemu runs as that daemon's user
        desktop_start(actor=owner, desktop=Desktop.objects.get(pk=desktop.pk))
        desktop.refresh_from_db()
        log = serial_log_path(desktop)
        deadline = time.monotonic() + 120
        while not (log.exists() and GUEST_READY_MARKER in log.read_text(errors="replace")):
            if time.monotonic() > deadline:
                raise SystemExit(f"the guest did not boot: {desktop.status_reason}")
            time.sleep(0.2)
        vnc_port = libvirt_driver.graphics_ports(uri, domain_name).vnc_port
        assert vnc_port is not None
        if options.renice and not options.tls:
            qemu_pid = int(Path(f"/run/libvirt/qemu/{domain_name}.pid").read_text())
            os.setpriority(os.PRIO_PROCESS, qemu_pid, -options.renice)

        port = free_port()
        daphne = subprocess.Popen(
            [
                str(ROOT / ".venv/bin/daphne"),
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
                "isard.asgi:application",
            ],
            cwd=ROOT,
            env=os.environ.copy(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for_port(port)
        base = f"http://127.0.0.1:{port}"
        client = Client()
        client.force_login(owner)
        cookie = (
            f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
        )
        page_url = f"{base}/desktops/{desktop.pk}/viewer/"
        password = desktop.graphics_password

        def viewer_access() -> dict[str, Any]:
            request = urllib.request.Request(page_url, headers={"Cookie": cookie})
            with urllib.request.urlopen(request, timeout=10) as response:
                page = response.read().decode()
            match = re.search(
                r'<script id="viewer-access" type="application/json">(.*?)</script>', page
            )
            if match is None:
                raise SystemExit("the viewer page has no access data")
            return dict(json.loads(match.group(1)))

        async def open_proxy() -> RfbClient:
            access = viewer_access()
            transport = await WebsocketTransport.open(
                f"ws://127.0.0.1:{port}{access['path']}", cookie=cookie, origin=base
            )
            viewer = RfbClient(transport)
            await viewer.handshake("")  # the proxy signs in to QEMU with the password
            return viewer

        async def open_direct() -> RfbClient:
            if not options.tls:
                viewer = RfbClient(await TcpTransport.open("127.0.0.1", vnc_port))
                await viewer.handshake(password)
                return viewer
            from desktops.viewer.rfb import UpstreamTls, upstream_sign_in
            from hypervisors import tls

            async def tls_settings() -> UpstreamTls:
                context = await asyncio.to_thread(
                    tls.viewer_proxy_tls_context, paths=tls.pki_paths()
                )
                return UpstreamTls(context=context, server_hostname="127.0.0.1")

            reader, writer = await asyncio.open_connection("127.0.0.1", vnc_port, limit=1 << 20)
            upstream = await upstream_sign_in(
                reader, writer, password=password, tls=tls_settings, require_tls=True
            )
            viewer = RfbClient(TcpTransport(upstream.reader, upstream.writer))
            await viewer.initialise()
            return viewer

        async def first_frame(open_viewer: Any) -> float:
            started = time.perf_counter()
            viewer = await open_viewer()
            await viewer.full_frame()
            elapsed = time.perf_counter() - started
            await viewer.close()
            return elapsed * 1000

        async def throughput(open_viewer: Any) -> tuple[float, int]:
            viewer = await open_viewer()
            await viewer.full_frame()  # warm: the screen size is settled
            received = 0
            started = time.perf_counter()
            for _ in range(options.frames):
                await viewer.request(incremental=False)
                received += await viewer.read_update()
            elapsed = time.perf_counter() - started
            await viewer.close()
            return received / elapsed / 1e6, received

        async def measure() -> dict[str, Any]:
            await first_frame(open_proxy)  # warm Daphne and the imports of its first request
            proxy_ms, direct_ms = [], []
            for _ in range(options.runs):
                direct_ms.append(await first_frame(open_direct))
                proxy_ms.append(await first_frame(open_proxy))
            proxy_rates, direct_rates = [], []
            frame_bytes = 0
            for _ in range(options.rounds):
                rate, received = await throughput(open_direct)
                direct_rates.append(rate)
                rate, _ = await throughput(open_proxy)
                proxy_rates.append(rate)
                frame_bytes = received // options.frames
            return {
                "proxy_ms": proxy_ms,
                "direct_ms": direct_ms,
                "proxy_mb_s": proxy_rates,
                "direct_mb_s": direct_rates,
                "frame_bytes": frame_bytes,
            }

        load_before = os.getloadavg()[0]
        raw = asyncio.run(measure())
        report: dict[str, Any] = {
            "cpus": os.cpu_count(),
            "load_average_1min": round(load_before, 1),
            "reniced_by": options.renice,
            "tls": options.tls,
            "runs": options.runs,
            "frames_per_round": options.frames,
            "rounds": options.rounds,
            "frame_bytes": raw["frame_bytes"],
            "open_to_first_frame_proxy_median_ms": round(statistics.median(raw["proxy_ms"]), 1),
            "open_to_first_frame_proxy_p95_ms": round(percentile(raw["proxy_ms"], 0.95), 1),
            "first_frame_direct_median_ms": round(statistics.median(raw["direct_ms"]), 1),
            "first_frame_direct_p95_ms": round(percentile(raw["direct_ms"], 0.95), 1),
            "proxy_mb_s": round(statistics.median(raw["proxy_mb_s"]), 1),
            "direct_mb_s": round(statistics.median(raw["direct_mb_s"]), 1),
        }
        report["throughput_ratio"] = round(report["proxy_mb_s"] / report["direct_mb_s"], 3)
        if options.browser:
            report.update(browser_open(page_url, base, cookie, options.runs))

        print(
            f"load average {report['load_average_1min']} on {report['cpus']} CPUs"
            + (f"; reniced by {options.renice}" if options.renice else "")
        )
        print()
        over = " (display over VeNCrypt x509 TLS on both paths)" if options.tls else ""
        print(f"| browser viewer, {options.runs} openings{over} | median | p95 |")
        print("| --- | --- | --- |")
        print(
            f"| open to first frame via HTTP + websocket proxy | "
            f"{report['open_to_first_frame_proxy_median_ms']} ms | "
            f"{report['open_to_first_frame_proxy_p95_ms']} ms |"
        )
        print(
            f"| baseline: first frame over TCP{' + TLS' if options.tls else ''} straight to QEMU | "
            f"{report['first_frame_direct_median_ms']} ms | "
            f"{report['first_frame_direct_p95_ms']} ms |"
        )
        if options.browser:
            print(
                f"| Chromium: navigation to noVNC connected and drawn | "
                f"{report['browser_open_median_ms']} ms | {report['browser_open_p95_ms']} ms |"
            )
        print()
        print(
            f"| throughput, {options.rounds} x {options.frames} full frames of "
            f"{report['frame_bytes']} bytes | median MB/s |"
        )
        print("| --- | --- |")
        print(f"| direct to QEMU | {report['direct_mb_s']} |")
        print(f"| through the websocket proxy | {report['proxy_mb_s']} |")
        print(f"| ratio (target >= 0.8) | {report['throughput_ratio']} |")
        if options.json:
            options.json.write_text(json.dumps({**report, "raw": raw}, indent=2))
    finally:
        if daphne is not None:
            os.killpg(daphne.pid, signal.SIGTERM)
            daphne.wait(timeout=30)
        if domain_name:
            from hypervisors.drivers import libvirt_driver

            libvirt_driver.undefine_domain(uri, domain_name)
        if tls_host is not None:
            tls_host.daemon.shut_down()
        shutil.rmtree(work, ignore_errors=True)


def browser_open(page_url: str, base: str, cookie: str, runs: int) -> dict[str, Any]:
    """Headless Chromium: navigation start to noVNC connected with a drawn canvas."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    profile = tempfile.mkdtemp(prefix="isard-bench-chromium-")
    browser_options = webdriver.ChromeOptions()
    browser_options.binary_location = "/usr/bin/chromium"
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
        "--window-size=1024,700",
    ):
        browser_options.add_argument(flag)
    driver = webdriver.Chrome(
        service=Service(executable_path="/usr/bin/chromedriver"), options=browser_options
    )
    drawn = """
        const canvas = document.querySelector("#screen canvas");
        if (document.body.dataset.state !== "connected" || !canvas || !canvas.width) return false;
        const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
        for (let i = 4; i < data.length; i += 4) {
          if (data[i] !== data[0] || data[i + 1] !== data[1] || data[i + 2] !== data[2]) {
            return performance.now();
          }
        }
        return false;
    """
    times: list[float] = []
    try:
        driver.get(f"{base}/no-such-page/")
        name, value = cookie.split("=", 1)
        driver.add_cookie({"name": name, "value": value, "path": "/"})
        for _ in range(runs + 1):
            driver.get("about:blank")
            driver.get(page_url)
            ready = WebDriverWait(driver, 30, poll_frequency=0.02).until(
                lambda d: d.execute_script(drawn)
            )
            # performance.now() counts from the navigation's start.
            times.append(float(ready))
        times = times[1:]  # the first opening warms Chromium's cache of noVNC's modules
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    return {
        "browser_open_median_ms": round(statistics.median(times), 1),
        "browser_open_p95_ms": round(percentile(times, 0.95), 1),
    }


if __name__ == "__main__":
    main()
