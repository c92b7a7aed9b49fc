"""Real guests under TCG on qemu:///system: the demo image, a host row, waiting helpers."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hypervisors.choices import Accelerator, HypervisorState
from hypervisors.guest_image import build_tiny_linux, parse_boot_count

SYSTEM_URI = "qemu:///system"
IMAGE_CACHE = Path("/var/tmp/isard-tests/cache")


@pytest.fixture(scope="session")
def tiny_image() -> Path:
    """The demo guest, rebuilt only when the builder changes."""
    import hypervisors.guest_image as builder

    digest = hashlib.sha256(Path(builder.__file__).read_bytes()).hexdigest()[:12]
    image = IMAGE_CACHE / f"tiny-linux-{digest}.qcow2"
    if not image.exists():
        IMAGE_CACHE.mkdir(parents=True, exist_ok=True)
        from hypervisors.demo import guest_kernel_root

        build_tiny_linux(image, kernel_root=guest_kernel_root())
    return image


@pytest.fixture
def system_hypervisor(pools: dict[str, Any]) -> Any:
    """This machine as a TCG hypervisor (nested KVM does not boot guests here)."""
    from desktops.fleet.monitoring import hypervisor_refresh
    from hypervisors.tests.factories import HypervisorFactory

    host = HypervisorFactory.create(
        name="system", uri=SYSTEM_URI, accelerator=Accelerator.QEMU, state=HypervisorState.ONLINE
    )
    return hypervisor_refresh(hypervisor=host)


@pytest.fixture
def demo_template(system_hypervisor: Any, tiny_image: Path) -> Any:
    from templates_app.demo import demo_hardware_profile
    from templates_app.services.templates import template_register_base

    return template_register_base(
        name="Tiny Linux (demo)", image=tiny_image, hardware=demo_hardware_profile()
    )


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


class Guests:
    """Drives desktops through the real services and reads their serial consoles."""

    def __init__(self, run: Any) -> None:
        self.run = run

    def boot(self, desktop: Any, actor: Any, timeout: float = 90) -> int:
        """Start the desktop and return the boot count its guest printed."""
        from desktops.choices import DesktopStatus
        from desktops.services.domains import serial_log_path
        from desktops.services.lifecycle import desktop_start

        desktop.refresh_from_db()
        log = serial_log_path(desktop)
        log.unlink(missing_ok=True)
        self.run(desktop_start, actor=actor, desktop=desktop)
        desktop.refresh_from_db()
        assert desktop.status == DesktopStatus.STARTED, desktop.status_reason

        def booted() -> int | None:
            return parse_boot_count(log.read_text(errors="replace")) if log.exists() else None

        return int(wait_for(booted, timeout, f"{desktop.name} to boot"))

    def shut_down(self, desktop: Any, actor: Any, timeout: float = 60) -> None:
        """Graceful ACPI shutdown; the guest powers itself off and the engine notices."""
        from desktops.choices import DesktopStatus
        from desktops.services.lifecycle import desktop_shutdown
        from desktops.services.reconciliation import desktops_reconcile

        desktop.refresh_from_db()
        self.run(desktop_shutdown, actor=actor, desktop=desktop)

        def stopped() -> bool:
            desktops_reconcile(hypervisor=desktop.hypervisor)
            desktop.refresh_from_db()
            return bool(desktop.status == DesktopStatus.STOPPED)

        wait_for(stopped, timeout, f"{desktop.name} to power off")


@pytest.fixture
def guests(run: Any) -> Any:
    yield Guests(run)
    # Leave no running guest behind, whatever the test did.
    from desktops.models import Desktop
    from hypervisors.drivers import libvirt_driver

    for desktop in Desktop.objects.all():
        libvirt_driver.undefine_domain(SYSTEM_URI, desktop.domain_name)


# --- the platform in Daphne, tasks run directly, headless Chromium (browser tests) ---------


@pytest.fixture
def platform_server() -> Any:
    from tests.integration.browser import AsgiServer

    return AsgiServer.get()


@pytest.fixture
def direct_tasks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Run each task the services schedule at once, in this process (not through Redis)."""
    from isard.celery import app
    from isard.core import tasks

    app.loader.import_default_modules()
    sent: list[str] = []

    def send(call: tasks.TaskCall, **_: Any) -> None:
        sent.append(call.name)
        if not call.options.get("countdown"):
            app.tasks[call.name](**call.kwargs)

    monkeypatch.setattr(tasks, "send_task", send)
    return sent


@pytest.fixture
def spice_tls() -> Any:
    """SPICE over TLS on the local libvirtd, before any guest starts (quick when done)."""
    from hypervisors import tls

    paths = tls.pki_paths()
    tls.local_spice_tls_ensure(paths=paths)
    return paths


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Any]:
    from tests.integration.browser import new_chromium

    driver = new_chromium(tmp_path / "chromium-profile")
    try:
        yield driver
    finally:
        driver.quit()
