"""A libvirt daemon that hangs must not hang its callers: every driver call is bounded.

libvirt's `test:///` driver runs in this process and never hangs, so the hang is made by
the operation (or the opening of the connection) waiting on a `threading.Event` longer
than a tiny `ISARD_LIBVIRT_CALL_TIMEOUT_SECONDS`. A real stopped daemon is in
`tests/integration/test_faults.py`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from hypervisors.drivers import libvirt_driver
from hypervisors.tests.test_driver import NODE_XML
from hypervisors.tests.test_events import SHARED, Listener, start_domain

URI = "test:///default"
TIMEOUT = 0.2


@pytest.fixture(autouse=True)
def short_timeout(settings: Any) -> None:
    settings.ISARD_LIBVIRT_CALL_TIMEOUT_SECONDS = TIMEOUT


@pytest.fixture
def other_host(tmp_path: Path) -> str:
    """A second, independent test:/// host."""
    node = tmp_path / "node.xml"
    node.write_text(NODE_XML)
    return f"test://{node}"


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """What a hung call waits for; set at the end so that no thread is left stuck."""
    event = threading.Event()
    yield event
    event.set()
    deadline = time.monotonic() + 10
    while libvirt_driver._abandoned_calls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not libvirt_driver._abandoned_calls


@pytest.fixture
def hanging_open(monkeypatch: pytest.MonkeyPatch, release: threading.Event) -> set[str]:
    """Opening a connection to a URI put in the returned set waits for `release`."""
    hung: set[str] = set()
    real_open = libvirt.open

    def open_(uri: str) -> libvirt.virConnect:
        if uri in hung:
            release.wait(30)
        return real_open(uri)

    monkeypatch.setattr(libvirt_driver.libvirt, "open", open_)
    return hung


def test_a_call_the_daemon_does_not_answer_fails_in_time_and_drops_the_connection(
    release: threading.Event,
) -> None:
    libvirt_driver.ping(URI)
    assert URI in libvirt_driver._connections

    began = time.monotonic()
    with pytest.raises(libvirt_driver.HypervisorHungError) as raised:
        libvirt_driver._call(URI, "wait", lambda connection: release.wait(30))
    assert time.monotonic() - began < TIMEOUT + 1
    assert str(raised.value) == f"wait: the libvirt daemon at {URI} did not answer in 0.2 s"
    assert isinstance(raised.value, libvirt_driver.DriverError)  # callers treat it as any
    assert URI not in libvirt_driver._connections

    # The next call opens a new connection and works, even while the old call still waits.
    assert libvirt_driver.ping(URI)
    assert libvirt_driver.host_info(URI).cpus > 0


def test_a_call_given_up_while_connecting_never_runs_its_operation(
    hanging_open: set[str], release: threading.Event, other_host: str
) -> None:
    hanging_open.add(other_host)
    ran: list[str] = []
    with pytest.raises(libvirt_driver.HypervisorHungError, match=r"did not answer in 0\.2 s"):
        libvirt_driver._call(other_host, "start", lambda connection: ran.append("started"))
    # Another host is not held up by the one that hangs (no lock shared across URIs).
    began = time.monotonic()
    assert libvirt_driver.ping(URI)
    assert time.monotonic() - began < TIMEOUT

    release.set()  # the daemon answers again: the connection opens, the start does not run
    deadline = time.monotonic() + 5
    while libvirt_driver._abandoned_calls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ran == []
    assert libvirt_driver.ping(other_host)


def test_calls_to_a_hung_daemon_stop_piling_up_then_resume_when_it_answers(
    release: threading.Event,
) -> None:
    for _ in range(libvirt_driver.MAX_ABANDONED_CALLS_PER_URI):
        with pytest.raises(libvirt_driver.HypervisorHungError, match="did not answer"):
            libvirt_driver._call(URI, "wait", lambda connection: release.wait(30))
    began = time.monotonic()
    with pytest.raises(libvirt_driver.HypervisorHungError) as raised:
        libvirt_driver.ping(URI)
    assert time.monotonic() - began < TIMEOUT  # at once: no thread more is left behind
    assert f"ping: the libvirt daemon at {URI} is not answering (4 calls" in str(raised.value)

    release.set()
    deadline = time.monotonic() + 5
    while libvirt_driver._abandoned_calls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert libvirt_driver.ping(URI)


def test_libvirt_errors_and_results_still_cross_the_thread() -> None:
    with pytest.raises(libvirt_driver.DomainNotFoundError, match="start isard-none"):
        libvirt_driver.start_domain(URI, "isard-none")
    assert libvirt_driver.domain_state(URI, "isard-none") == libvirt_driver.DomainState.MISSING


def test_forgetting_a_connection_does_not_wait_for_its_close() -> None:
    closing = threading.Event()

    class HungConnection:
        def close(self) -> None:
            closing.wait(30)  # as the close call to a stopped daemon

    with libvirt_driver._connections_lock:
        libvirt_driver._connections["test:///hung"] = HungConnection()
    began = time.monotonic()
    libvirt_driver.forget_connection("test:///hung")
    assert time.monotonic() - began < 0.1
    assert "test:///hung" not in libvirt_driver._connections
    closing.set()


def test_the_event_listener_goes_on_serving_other_hosts_while_one_does_not_answer(
    hanging_open: set[str], release: threading.Event, other_host: str
) -> None:
    hanging_open.add(other_host)
    listener = Listener()
    listener.thread.start()
    name = ""
    try:
        listener.listen_to(SHARED, other_host, expect=frozenset({SHARED}))
        name = start_domain()
        assert listener.heard(name, "running") == SHARED
        release.set()  # it answers again: it is listened to from the next refresh
        listener.listen_to(SHARED, other_host)
    finally:
        listener.stop.set()
        listener.thread.join(timeout=30)
        if name:
            libvirt_driver.undefine_domain(SHARED, name)
    assert not listener.thread.is_alive()
