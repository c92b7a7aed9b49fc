"""Fixtures of the fleet tests: hosts on libvirt's test driver, each sized by its own file."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from conftest import TaskRunner
from desktops.fleet.monitoring import hypervisor_refresh
from hypervisors.choices import Accelerator, PlacementPolicy
from hypervisors.models import Hypervisor, StoragePool
from hypervisors.tests.factories import HypervisorFactory
from isard.celery import app


@pytest.fixture(autouse=True)
def own_lock_namespace(settings: Any) -> None:
    # Another test run sharing the Redis database must not hold our locks.
    settings.ISARD_LOCK_NAMESPACE = f"isard-test-{uuid.uuid4().hex}"
    settings.ISARD_PLACEMENT_POLICY = PlacementPolicy.MOST_FREE_MEMORY


HostMaker = Callable[..., Hypervisor]


@pytest.fixture
def make_host(tmp_path: Path, pools: dict[str, StoragePool]) -> HostMaker:
    """A hypervisor on its own `test:///<node.xml>`, sized by that file and sampled once.

    Each node file is an independent libvirt host (its own CPUs, memory and domains).
    """

    def make(name: str, memory_gib: int, cpus: int, **fields: Any) -> Hypervisor:
        node = tmp_path / f"{name}.xml"
        cores = max(cpus // 2, 1)
        threads = cpus // cores
        node.write_text(
            "<node><cpu><nodes>1</nodes><sockets>1</sockets>"
            f"<cores>{cores}</cores><threads>{threads}</threads><mhz>2000</mhz></cpu>"
            f"<memory>{memory_gib * 1024 * 1024}</memory></node>"
        )
        host = HypervisorFactory.create(
            name=name, uri=f"test://{node}", accelerator=Accelerator.QEMU, **fields
        )
        return hypervisor_refresh(hypervisor=host)

    return make


def celery_queue(call: Any) -> str:
    """The queue a scheduled task goes to, as `app.send_task` would pick it."""
    routed = app.amqp.router.route(dict(call.options), call.name, (), dict(call.kwargs))
    return str(routed["queue"].name)


class RoutedRunner(TaskRunner):
    """The `run` fixture's runner, also noting the queue each scheduled task went to."""

    def __init__(self, capture: Any) -> None:
        super().__init__(capture)
        self.routed: list[tuple[str, str]] = []

    def process(self, callbacks: list[Any]) -> None:
        from isard.core.tasks import send_task

        for callback in callbacks:
            if isinstance(callback, partial) and callback.func is send_task:
                call = callback.args[0]
                self.routed.append((call.name, celery_queue(call)))
        super().process(callbacks)


@pytest.fixture
def routed(django_capture_on_commit_callbacks: Any) -> RoutedRunner:
    return RoutedRunner(django_capture_on_commit_callbacks)
