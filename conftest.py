"""Fixtures shared by every app's tests.

Unit tests run the real services against libvirt's `test:///default` driver (real
libvirt code, no guests) and real qemu-img on files in a temporary storage root.
Integration tests (marker `integration`) boot real guests on `qemu:///system`.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hypervisors.choices import Accelerator, HypervisorState

TEST_STORAGE_PARENT = Path("/var/tmp/isard-tests")

# The API's test fixtures (two schools with people of every role, clients, checks).
pytest_plugins = ["tests.campus"]


@pytest.fixture
def storage_root(settings: Any) -> Iterator[Path]:
    """A storage root that qemu (running as its own user) can reach, removed afterwards."""
    TEST_STORAGE_PARENT.mkdir(parents=True, exist_ok=True)
    TEST_STORAGE_PARENT.chmod(0o755)
    root = Path(tempfile.mkdtemp(dir=TEST_STORAGE_PARENT))
    root.chmod(0o755)
    settings.ISARD_STORAGE_ROOT = root
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pools(storage_root: Path, db: None) -> dict[str, Any]:
    from hypervisors.services.pools import storage_pools_ensure

    return storage_pools_ensure(root=storage_root)


@pytest.fixture
def test_hypervisor(pools: dict[str, Any]) -> Any:
    """A hypervisor on libvirt's test driver, online, with room for many desktops."""
    from hypervisors.tests.factories import HypervisorFactory

    return HypervisorFactory.create(
        uri="test:///default",
        accelerator=Accelerator.QEMU,
        state=HypervisorState.ONLINE,
        free_memory_mib=64 * 1024,
        memory_mib=64 * 1024,
        cpus=16,
    )


def make_qcow2(path: Path, size: str = "64M") -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return path


@pytest.fixture
def base_template(pools: dict[str, Any], tmp_path: Path) -> Any:
    """A ready root template whose disk is a real (empty) qcow2 in the base pool."""
    from templates_app.services.templates import template_register_base
    from templates_app.tests.factories import HardwareProfileFactory

    image = make_qcow2(tmp_path / "base.qcow2")
    return template_register_base(
        name="Base", image=image, hardware=HardwareProfileFactory.create(networks=[])
    )


class TaskRunner:
    """Runs a service, then every Celery task it scheduled, directly (not in eager mode).

    Tasks that the code schedules with a countdown (timeouts) are kept in `delayed` for
    the test to run when it chooses. Other after-commit callbacks (broadcasts) run too.
    """

    def __init__(self, capture: Any) -> None:
        self.capture = capture
        self.sent: list[str] = []
        self.delayed: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        with self.capture(execute=False) as callbacks:
            result = function(*args, **kwargs)
        self.process(callbacks)
        return result

    def process(self, callbacks: list[Any]) -> None:
        from functools import partial

        from isard.celery import app
        from isard.core.tasks import TaskCall, send_task

        app.loader.import_default_modules()  # registers every app's tasks

        for callback in callbacks:
            if isinstance(callback, partial) and callback.func is send_task:
                call: TaskCall = callback.args[0]
                self.sent.append(call.name)
                if call.options.get("countdown"):
                    self.delayed.append((call.name, dict(call.kwargs)))
                else:
                    self(app.tasks[call.name], **call.kwargs)
            else:
                callback()

    def run_delayed(self) -> None:
        from isard.celery import app

        delayed, self.delayed = self.delayed, []
        for name, task_kwargs in delayed:
            self(app.tasks[name], **task_kwargs)


@pytest.fixture
def run(django_capture_on_commit_callbacks: Any) -> TaskRunner:
    return TaskRunner(django_capture_on_commit_callbacks)
