"""The libvirt event listener follows the hypervisor list while it runs.

libvirt's `test:///default` is one host shared by every connection of this process, so a
domain started through the driver raises lifecycle events on the listener's own
connection, as on a real host.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from desktops.choices import DesktopStatus
from desktops.management.commands.isard_events import watched_uris
from desktops.models import Desktop
from hypervisors.drivers import libvirt_driver
from hypervisors.drivers.domain_xml import DiskSpec, DomainSpec, build_domain_xml
from hypervisors.tests.factories import HypervisorFactory

SHARED = "test:///default"
UNREACHABLE = "qemu+unix:///system?socket=/nonexistent/isard-test/libvirt-sock"
WAIT = 30.0


class Listener:
    """`run_event_loop` in a thread, with the hosts to listen to set by the test."""

    def __init__(self) -> None:
        self.wanted: list[str] = []
        self.database_away = False
        self.received: list[tuple[str, str, str]] = []
        self.events: queue.Queue[tuple[str, str, str]] = queue.Queue()
        self.watching: queue.Queue[frozenset[str]] = queue.Queue()
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=libvirt_driver.run_event_loop,
            args=(self.uris, self.on_change, self.stop),
            kwargs={"refresh_seconds": 0.1, "on_watch": self.watching.put},
            daemon=True,
        )

    def uris(self) -> list[str]:
        if self.database_away:
            raise RuntimeError("the database went away")
        return list(self.wanted)

    def on_change(self, uri: str, name: str, state: libvirt_driver.DomainState) -> None:
        self.events.put((uri, name, state.value))

    def listen_to(self, *uris: str, expect: frozenset[str] | None = None) -> None:
        """Change the host list and wait until the loop listens to `expect` (default: all)."""
        self.wanted = list(uris)
        expect = frozenset(uris) if expect is None else expect
        deadline = time.monotonic() + WAIT
        seen: frozenset[str] | None = None
        while time.monotonic() < deadline:
            seen = self.watching.get(timeout=WAIT)
            if seen == expect:
                return
        pytest.fail(f"the listener listens to {seen}, not {expect}")

    def heard(self, name: str, state: str) -> str:
        """Wait for an event saying domain `name` is in `state`; the URI it came from.

        A domain defined then started raises two events; the state is read when each is
        handled, so the first may say shutoff or running. Other events are kept.
        """
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            event = self.events.get(timeout=WAIT)
            self.received.append(event)
            if event[1:] == (name, state):
                return event[0]
        pytest.fail(f"no event saying {name} is {state}")

    def domains_heard(self) -> set[str]:
        while not self.events.empty():
            self.received.append(self.events.get())
        return {domain for _uri, domain, _state in self.received}


@pytest.fixture
def listener() -> Iterator[Listener]:
    running = Listener()
    running.thread.start()
    yield running
    running.stop.set()
    running.thread.join(timeout=WAIT)
    assert not running.thread.is_alive()


def start_domain() -> str:
    name = f"{libvirt_driver.DOMAIN_PREFIX}{uuid.uuid4()}"
    spec = DomainSpec(
        name=name,
        uuid=str(uuid.uuid4()),
        domain_type="qemu",
        vcpus=1,
        memory_mib=128,
        disks=(DiskSpec(path="/tmp/none.qcow2"),),
        spice=False,
        vnc=False,
    )
    libvirt_driver.define_domain(SHARED, build_domain_xml(spec, storage_pools=("/tmp",)))
    libvirt_driver.start_domain(SHARED, name)
    return name


def test_the_listener_follows_hosts_added_changed_and_removed_without_a_restart(
    listener: Listener,
) -> None:
    names: list[str] = []
    try:
        # A host registered with a wrong URI: nothing to listen to yet.
        listener.listen_to(UNREACHABLE, expect=frozenset())

        # The administrator fixes the URI: its events arrive.
        listener.listen_to(SHARED)
        names.append(start_domain())
        assert listener.heard(names[0], "running") == SHARED

        # Removed: what happens there now is not heard...
        listener.listen_to()
        unheard = start_domain()
        names.append(unheard)
        libvirt_driver.destroy_domain(SHARED, unheard)

        # ...and added back, it is heard again, from the next event on.
        listener.listen_to(SHARED)
        names.append(start_domain())
        assert listener.heard(names[2], "running") == SHARED
        assert unheard not in listener.domains_heard()
    finally:
        for name in names:
            libvirt_driver.undefine_domain(SHARED, name)


def test_a_failing_host_list_keeps_the_hosts_already_listened_to(listener: Listener) -> None:
    listener.listen_to(SHARED)
    listener.database_away = True
    for _ in range(2):  # at least one whole refresh ran without the list
        assert listener.watching.get(timeout=WAIT) == frozenset({SHARED})
    name = start_domain()
    try:
        assert listener.heard(name, "running") == SHARED
    finally:
        libvirt_driver.undefine_domain(SHARED, name)


@pytest.mark.django_db
def test_the_command_listens_to_every_host_or_to_those_of_one_worker_queue() -> None:
    HypervisorFactory.create(name="local", uri="qemu:///system")
    HypervisorFactory.create(name="lab2", uri="qemu+tls://lab2/system", queue="hv.lab2")
    HypervisorFactory.create(name="lab2-bis", uri="qemu+tls://lab2/system", queue="hv.lab2")
    assert watched_uris() == ["qemu+tls://lab2/system", "qemu:///system"]
    assert watched_uris("hv.lab2") == ["qemu+tls://lab2/system"]
    assert watched_uris("celery") == ["qemu:///system"]


@pytest.mark.django_db
def test_an_event_from_a_host_the_desktop_is_not_on_is_ignored(test_hypervisor: Any) -> None:
    from accounts.tests.factories import UserFactory
    from desktops.management.commands.isard_events import apply_event
    from templates_app.tests.factories import HardwareProfileFactory

    desktop = Desktop.objects.create(
        name="d",
        owner=UserFactory.create(),
        hardware=HardwareProfileFactory.create(networks=[]),
        hypervisor=test_hypervisor,
        status=DesktopStatus.STARTED,
    )
    # Its old host reports it gone after a migration: not where it runs now.
    gone = libvirt_driver.DomainState.MISSING
    apply_event("qemu+tls://old-host/system", desktop.domain_name, gone)
    desktop.refresh_from_db()
    assert desktop.status == DesktopStatus.STARTED
    apply_event(test_hypervisor.uri, desktop.domain_name, libvirt_driver.DomainState.SHUTOFF)
    desktop.refresh_from_db()
    assert desktop.status == DesktopStatus.STOPPED
