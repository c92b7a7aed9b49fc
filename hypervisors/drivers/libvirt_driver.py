"""The only module that imports `libvirt`.

Every call takes a libvirt URI, so the same functions serve the local host, remote hosts
and libvirt's `test:///` driver. Failures surface as `DriverError` with libvirt's own
message, so services can record a reason a person can read.

libvirt calls have no timeout of their own, so every call here is bounded (`_call`,
`ISARD_LIBVIRT_CALL_TIMEOUT_SECONDS`): a daemon that hangs raises `HypervisorHungError`
instead of blocking the worker that reached it. Three callers have limits of their own:
the accelerator probe and live migrations (longer, see their docstrings) and the event
listener (which never waits on a host at all, see `run_event_loop`).
"""

from __future__ import annotations

import enum
import logging
import math
import os
import queue
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import libvirt

from hypervisors.drivers.domain_xml import ISARD_XML_NAMESPACE

logger = logging.getLogger(__name__)

# libvirt prints every error to stderr by default; ours are raised as DriverError instead.
libvirt.registerErrorHandler(lambda _context, _error: None, None)

DOMAIN_PREFIX = "isard-"

T = TypeVar("T")


class DriverError(Exception):
    """A libvirt operation failed; the message is libvirt's."""


class DomainNotFoundError(DriverError):
    pass


class HypervisorHungError(DriverError):
    """The libvirt daemon did not answer in time: stopped, overloaded, or its host's
    network went away. Callers treat it as any other failure of the host."""


class DomainState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"
    CRASHED = "crashed"
    MISSING = "missing"
    OTHER = "other"


_STATE_MAP = {
    libvirt.VIR_DOMAIN_RUNNING: DomainState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: DomainState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: DomainState.PAUSED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: DomainState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: DomainState.RUNNING,  # shutting down: still running
    libvirt.VIR_DOMAIN_SHUTOFF: DomainState.SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED: DomainState.CRASHED,
}


@dataclass(frozen=True)
class HostInfo:
    hostname: str
    cpus: int
    memory_mib: int
    free_memory_mib: int
    running_domains: int
    libvirt_version: str
    hypervisor_version: str


@dataclass(frozen=True)
class GraphicsPorts:
    spice_port: int | None
    spice_tls_port: int | None
    vnc_port: int | None
    listen: str | None


# libvirt connections are thread-safe; one per URI per process is enough. Guarded by a
# lock because Celery threads and the Channels event loop's executors share this module.
# The lock is never held across a libvirt call: opening a connection to a hung daemon
# blocks, and it must block only the callers of that URI (`_opening_locks`), not all.
_connections: dict[str, libvirt.virConnect] = {}
_connections_lock = threading.Lock()
_opening_locks: dict[str, threading.Lock] = {}

#: How long a libvirt call may take when the setting is not available (no Django).
DEFAULT_CALL_TIMEOUT_SECONDS = 60.0
#: Calls to one URI that may be left waiting on a daemon that stopped answering. Past
#: that, further calls fail at once instead of leaving one more thread behind each.
MAX_ABANDONED_CALLS_PER_URI = 4


def call_timeout_seconds() -> float:
    """How long one libvirt call may take (`ISARD_LIBVIRT_CALL_TIMEOUT_SECONDS`)."""
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    try:
        return float(
            getattr(settings, "ISARD_LIBVIRT_CALL_TIMEOUT_SECONDS", DEFAULT_CALL_TIMEOUT_SECONDS)
        )
    except ImproperlyConfigured:  # used outside Django (a benchmark script)
        return DEFAULT_CALL_TIMEOUT_SECONDS


def guest_agent_channel_fits(uri: str) -> bool:
    """Whether a domain on `uri` can have the guest agent's channel.

    libvirt puts the channel's socket under the daemon's own directory: for a per-user
    (`.../session`) daemon that is under the user's home, and with a domain's name the
    path easily passes the 108 bytes a UNIX socket path may have ("UNIX socket path ...
    too long": the guest does not start). System daemons use /var/lib/libvirt, which fits.
    """
    return not urlsplit(uri).path.rstrip("/").endswith("/session")


def _libvirt_error_message(error: libvirt.libvirtError) -> str:
    return error.get_error_message() or str(error)


def _let_go(connection: libvirt.virConnect, *, close: bool) -> None:
    """Release a connection from a thread of its own.

    Closing a connection to a hung daemon blocks (it is a call to the daemon), and so
    does dropping its last reference (libvirt-python closes it then). The caller must
    not wait for either.
    """

    def release(connection: libvirt.virConnect | None) -> None:
        if close and connection is not None:
            try:
                connection.close()
            except libvirt.libvirtError:
                pass
        connection = None  # the last reference may go here, in this thread

    threading.Thread(
        target=release, args=(connection,), name="isard-libvirt-release", daemon=True
    ).start()


def _cached(uri: str) -> libvirt.virConnect | None:
    """The cached connection to `uri` if it is alive; a dead one is dropped."""
    with _connections_lock:
        connection = _connections.get(uri)
    if connection is None:
        return None
    try:
        # Local: asks the client library whether the socket is open, not the daemon.
        if connection.isAlive():
            return connection
    except libvirt.libvirtError:
        pass
    with _connections_lock:
        if _connections.get(uri) is connection:
            del _connections[uri]
    _let_go(connection, close=False)
    return None


def connect(uri: str) -> libvirt.virConnect:
    """Return a live connection to `uri`, reopening it if the daemon went away.

    Opening has no timeout of its own: call it through `_call` (which bounds it) unless
    the caller bounds it otherwise. One thread at a time opens a given URI.
    """
    connection = _cached(uri)
    if connection is not None:
        return connection
    with _connections_lock:
        opening = _opening_locks.setdefault(uri, threading.Lock())
    with opening:
        connection = _cached(uri)
        if connection is not None:
            return connection  # another thread opened it meanwhile
        try:
            connection = libvirt.open(uri)
        except libvirt.libvirtError as error:
            raise DriverError(
                f"cannot connect to {uri}: {_libvirt_error_message(error)}"
            ) from error
        with _connections_lock:
            _connections[uri] = connection
        return connection


def forget_connection(uri: str) -> None:
    """Drop the cached connection (after a host was found dead, so the next call reopens).

    It is closed in the background: closing a connection to a hung daemon would block.
    """
    with _connections_lock:
        connection = _connections.pop(uri, None)
    if connection is not None:
        _let_go(connection, close=True)


def _drop_hung_connection(uri: str) -> None:
    """Drop the cached connection of a daemon that stopped answering, without closing it.

    The thread still waiting on it keeps its own reference; the connection closes when
    that call returns (the daemon answered again) or fails.
    """
    with _connections_lock:
        connection = _connections.pop(uri, None)
    if connection is not None:
        _let_go(connection, close=False)


# --- bounded calls ----------------------------------------------------------------------------


class _CallState(enum.Enum):
    QUEUED = enum.auto()
    RUNNING = enum.auto()
    DONE = enum.auto()
    CANCELLED = enum.auto()  # given up before it ran: it never runs
    ABANDONED = enum.auto()  # given up while it ran: its result is thrown away


class _Latch:
    """Set once, waited on with a timeout: a `threading.Event` at half the cost (a bare
    lock instead of a condition variable), which is most of a call's hand-off."""

    __slots__ = ("_is_set", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._is_set = False

    def set(self) -> None:
        self._is_set = True
        self._lock.release()

    def is_set(self) -> bool:
        return self._is_set

    def wait(self, timeout: float | None = None) -> bool:
        if self._is_set:
            return True
        if self._lock.acquire(timeout=-1 if timeout is None else timeout):
            self._lock.release()  # for any other waiter
            return True
        return False


class _BoundedCall:
    """One libvirt call run by a `_CallThreads` thread while its caller waits."""

    __slots__ = ("error", "finished", "result", "started", "state", "uri", "work")

    def __init__(self, uri: str, work: Callable[[_BoundedCall], object]) -> None:
        self.uri = uri
        self.work = work
        self.state = _CallState.QUEUED
        self.started = 0.0
        self.result: object = None
        self.error: BaseException | None = None
        self.finished = _Latch()

    def given_up(self) -> bool:
        with _calls_lock:
            return self.state == _CallState.ABANDONED

    def run(self) -> None:
        with _calls_lock:
            if self.state == _CallState.CANCELLED:
                return
            self.state = _CallState.RUNNING
            self.started = time.monotonic()
        try:
            self.result = self.work(self)
        except BaseException as error:  # handed to the caller's thread
            self.error = error
        with _calls_lock:
            if self.state == _CallState.ABANDONED:
                waiting = _abandoned_calls.get(self.uri)
                if waiting is not None:
                    waiting.discard(self)
                    if not waiting:
                        del _abandoned_calls[self.uri]
                # Nobody will read them; do not keep the connection alive through them.
                self.result = self.error = None
            self.state = _CallState.DONE
        self.finished.set()


class _CallThreads:
    """The threads that run libvirt calls: an idle one takes a call, else a new one starts.

    Not a fixed-size pool (ThreadPoolExecutor): a thread stuck on a hung daemon would hold
    its slot, and a few stuck calls would block every call to every host. Here a stuck
    thread is simply not idle; `MAX_ABANDONED_CALLS_PER_URI` bounds how many can pile up.
    Handing a call to an idle thread costs about 15 µs; starting a thread per call cost
    about 450 µs on the 2-core test machine. Idle threads exit after `idle_seconds`.
    """

    def __init__(self, idle_seconds: float = 60.0) -> None:
        self.idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._calls: queue.SimpleQueue[_BoundedCall] = queue.SimpleQueue()
        # Threads waiting for a call minus calls waiting for a thread.
        self._idle = 0

    def submit(self, call: _BoundedCall) -> None:
        with self._lock:
            self._calls.put(call)
            if self._idle > 0:
                self._idle -= 1
                return
        threading.Thread(target=self._serve, name="isard-libvirt-call", daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                call = self._calls.get(timeout=self.idle_seconds)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:  # more threads wait than calls: this one may go
                        self._idle -= 1
                        return
                continue  # a call arrived for this thread just now
            call.run()
            del call
            with self._lock:
                self._idle += 1


_calls_lock = threading.Lock()
_abandoned_calls: dict[str, set[_BoundedCall]] = {}
_call_threads = _CallThreads()


def _bounded(uri: str, what: str, work: Callable[[_BoundedCall], T], timeout: float) -> T:
    """Run `work` in a call thread and wait at most `timeout` seconds for it.

    libvirt calls have no timeout: a daemon that hangs (stopped, not dead; a host whose
    network went away) would block the caller for ever, and with it a Celery worker
    process. On timeout the call is given up: `HypervisorHungError`, the URI's cached
    connection is dropped (not closed: that would block too), and the thread is left to
    finish or fail on its own, its result thrown away. A call that reached the daemon may
    still take effect when it answers again: a start then runs a guest whose desktop
    says failed, and the reconciliation (`desktop_sync_state`) makes it started.
    """
    with _calls_lock:
        waiting = _abandoned_calls.get(uri)
        if waiting is not None and len(waiting) >= MAX_ABANDONED_CALLS_PER_URI:
            oldest = time.monotonic() - min(call.started for call in waiting)
            raise HypervisorHungError(
                f"{what}: the libvirt daemon at {uri} is not answering "
                f"({len(waiting)} calls have waited for it, the oldest for {oldest:.0f} s)"
            )
    call = _BoundedCall(uri, work)
    _call_threads.submit(call)
    if not call.finished.wait(timeout):
        with _calls_lock:
            if call.state == _CallState.QUEUED:
                call.state = _CallState.CANCELLED
            elif call.state == _CallState.RUNNING:
                call.state = _CallState.ABANDONED
                _abandoned_calls.setdefault(uri, set()).add(call)
            gave_up = call.state != _CallState.DONE
        if gave_up:
            _drop_hung_connection(uri)
            message = f"{what}: the libvirt daemon at {uri} did not answer in {timeout:g} s"
            logger.warning("%s", message)
            raise HypervisorHungError(message)
        call.finished.wait()  # it finished between the wait and the lock
    if call.error is not None:
        error, call.error = call.error, None
        raise error
    return call.result  # type: ignore[return-value]


def _call(
    uri: str,
    what: str,
    operation: Callable[[libvirt.virConnect], T],
    *,
    timeout: float | None = None,
) -> T:
    """Connect to `uri` and run `operation`, within `timeout` (default: the setting).

    libvirt's errors become `DriverError` (`DomainNotFoundError` for a missing domain); a
    daemon that does not answer in time, `HypervisorHungError`.
    """

    def work(call: _BoundedCall) -> T:
        connection = connect(uri)
        if call.given_up():
            # Opening took past the caller's patience: it has failed already, so the
            # operation (a start, say) must not happen behind its back.
            raise HypervisorHungError(f"{what}: given up while connecting to {uri}")
        try:
            return operation(connection)
        except libvirt.libvirtError as error:
            if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise DomainNotFoundError(f"{what}: {_libvirt_error_message(error)}") from error
            if error.get_error_domain() in (libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE):
                forget_connection(uri)
            raise DriverError(f"{what}: {_libvirt_error_message(error)}") from error

    return _bounded(uri, what, work, call_timeout_seconds() if timeout is None else timeout)


def ping(uri: str, *, timeout: float | None = None) -> str:
    """Return the host name if the daemon answers, else raise `DriverError`.

    `timeout` shortens the wait for callers that only report (the health page).
    """
    return _call(uri, "ping", lambda c: c.getHostname(), timeout=timeout)


def _version_string(number: int) -> str:
    return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"


def host_info(uri: str) -> HostInfo:
    def read(connection: libvirt.virConnect) -> HostInfo:
        _model, memory_mib, cpus, *_rest = connection.getInfo()
        try:
            free_mib = connection.getFreeMemory() // (1024 * 1024)
        except libvirt.libvirtError:
            free_mib = memory_mib
        running = len(connection.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE))
        return HostInfo(
            hostname=connection.getHostname(),
            cpus=cpus,
            memory_mib=memory_mib,
            free_memory_mib=int(free_mib),
            running_domains=running,
            libvirt_version=_version_string(connection.getLibVersion()),
            hypervisor_version=_version_string(connection.getVersion()),
        )

    return _call(uri, "host info", read)


_validated_shapes: set[tuple[str, str]] = set()


_validation_lock = threading.Lock()


def define_domain(uri: str, xml: str, *, shape: str | None = None) -> None:
    """Define (or redefine) a persistent domain, validating the XML against libvirt's schema.

    Schema validation costs about 6 ms per call; `shape` (see `domain_xml.shape_key`) lets
    it run once per distinct shape of XML. libvirt's parser still checks every definition.
    """
    validate = shape is None or (uri, shape) not in _validated_shapes
    if not validate:
        _call(uri, "define domain", lambda connection: connection.defineXMLFlags(xml, 0))
        return
    # One schema validation at a time in this process, for an in-process driver
    # (test:///): libxml2's RelaxNG set-up is not thread-safe, and a class provisioned by
    # several threads failed at random with "Unable to parse RNG ... 'unsignedInt' is not
    # exported". A thread that waited finds the shape validated and skips the schema. A
    # daemon validates in its own process: no lock, so the defines of a class on a host
    # that hangs wait side by side, not one after another (a class of 26 then took 26
    # call timeouts to be told).
    with _validation_lock if _validates_in_process(uri) else nullcontext():
        validate = shape is None or (uri, shape) not in _validated_shapes
        flags = libvirt.VIR_DOMAIN_DEFINE_VALIDATE if validate else 0
        _call(uri, "define domain", lambda connection: connection.defineXMLFlags(xml, flags))
        if validate and shape is not None:
            _validated_shapes.add((uri, shape))


def _validates_in_process(uri: str) -> bool:
    return urlsplit(uri).scheme == "test"


def _lookup(connection: libvirt.virConnect, name: str) -> libvirt.virDomain:
    return connection.lookupByName(name)


def start_domain(uri: str, name: str) -> None:
    _call(uri, f"start {name}", lambda c: _lookup(c, name).create())


def shutdown_domain(uri: str, name: str) -> None:
    """Ask the guest to power off (ACPI power button); it may take a while or ignore it."""

    def shutdown(connection: libvirt.virConnect) -> None:
        domain = _lookup(connection, name)
        try:
            domain.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
        except libvirt.libvirtError as error:
            # Drivers that cannot choose the method (test:///) take the default one.
            if error.get_error_code() not in (
                libvirt.VIR_ERR_INVALID_ARG,
                libvirt.VIR_ERR_NO_SUPPORT,
            ):
                raise
            domain.shutdown()

    _call(uri, f"shut down {name}", shutdown)


def destroy_domain(uri: str, name: str) -> None:
    """Power the guest off at once. Not an error if it is already off or gone."""

    def destroy(connection: libvirt.virConnect) -> None:
        try:
            domain = _lookup(connection, name)
        except libvirt.libvirtError as error:
            if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return
            raise
        if domain.isActive():
            try:
                domain.destroy()
            except libvirt.libvirtError as error:
                if error.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                    raise

    _call(uri, f"force off {name}", destroy)


def reset_domain(uri: str, name: str) -> None:
    _call(uri, f"reset {name}", lambda c: _lookup(c, name).reset(0))


def undefine_domain(uri: str, name: str, *, timeout: float | None = None) -> None:
    """Power off and remove the domain definition; disks are left alone. Idempotent."""

    def undefine(connection: libvirt.virConnect) -> None:
        try:
            domain = _lookup(connection, name)
        except libvirt.libvirtError as error:
            if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return
            raise
        if domain.isActive():
            domain.destroy()
        flags = libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
        try:
            domain.undefineFlags(flags)
        except libvirt.libvirtError:
            # Drivers without NVRAM support (test:///) reject the flags.
            domain.undefine()

    _call(uri, f"undefine {name}", undefine, timeout=timeout)


def _state_of(domain: libvirt.virDomain) -> DomainState:
    state, reason = domain.state()
    if state == libvirt.VIR_DOMAIN_SHUTOFF and reason == libvirt.VIR_DOMAIN_SHUTOFF_CRASHED:
        # `on_crash` destroys a panicked guest at once: it is off because it crashed.
        return DomainState.CRASHED
    return _STATE_MAP.get(state, DomainState.OTHER)


def domain_state(uri: str, name: str, *, timeout: float | None = None) -> DomainState:
    """The domain's state (MISSING if it is not defined); `timeout` as for `_call`."""

    def read(connection: libvirt.virConnect) -> DomainState:
        try:
            return _state_of(_lookup(connection, name))
        except libvirt.libvirtError as error:
            if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return DomainState.MISSING
            raise

    return _call(uri, f"state of {name}", read, timeout=timeout)


def list_domain_states(uri: str, prefix: str = DOMAIN_PREFIX) -> dict[str, DomainState]:
    """States of every domain (defined or running) whose name starts with `prefix`."""

    def read(connection: libvirt.virConnect) -> dict[str, DomainState]:
        states: dict[str, DomainState] = {}
        for domain in connection.listAllDomains(0):
            name = domain.name()
            if not name.startswith(prefix):
                continue
            try:
                states[name] = _state_of(domain)
            except libvirt.libvirtError as error:
                # Undefined between the listing and this call: it is simply gone.
                if error.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
        return states

    return _call(uri, "list domains", read)


def domain_xml(uri: str, name: str) -> str:
    return _call(uri, f"read XML of {name}", lambda c: _lookup(c, name).XMLDesc(0))


def domain_isard_metadata(uri: str, name: str, *, timeout: float | None = None) -> dict[str, str]:
    """The attributes of the domain's `<isard:desktop>` metadata (empty if it has none)."""

    def read(connection: libvirt.virConnect) -> dict[str, str]:
        try:
            text = _lookup(connection, name).metadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT, ISARD_XML_NAMESPACE, 0
            )
        except libvirt.libvirtError as error:
            if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
                return {}
            raise
        return dict(ET.fromstring(text).attrib)

    return _call(uri, f"read the metadata of {name}", read, timeout=timeout)


def graphics_ports(uri: str, name: str) -> GraphicsPorts:
    """The ports libvirt assigned to the running guest's SPICE and VNC servers."""
    root = ET.fromstring(domain_xml(uri, name))

    def port(element: ET.Element | None, attribute: str) -> int | None:
        if element is None:
            return None
        value = element.get(attribute)
        return int(value) if value and int(value) > 0 else None

    spice = root.find("./devices/graphics[@type='spice']")
    vnc = root.find("./devices/graphics[@type='vnc']")
    listen = spice if spice is not None else vnc
    return GraphicsPorts(
        spice_port=port(spice, "port"),
        spice_tls_port=port(spice, "tlsPort"),
        vnc_port=port(vnc, "port"),
        listen=listen.get("listen") if listen is not None else None,
    )


def boot_probe(
    uri: str, xml: str, serial_log: str, marker: str, timeout: float
) -> tuple[bool, str]:
    """Start a transient domain and wait for `marker` on its serial log.

    Returns (booted, detail). This is how the accelerator is found: libvirt's capabilities
    list KVM on hosts where nested KVM crashes or hangs every real guest, so only a real
    boot tells.

    The whole probe is bounded by `timeout` plus three ordinary call timeouts, not one:
    on a fresh host libvirtd may first spend a minute probing QEMU inside `createXML`.
    A daemon that hangs raises `HypervisorHungError`; the abandoned probe destroys its
    guest by itself if the daemon answers again.
    """
    try:
        os.unlink(serial_log)
    except FileNotFoundError:
        pass

    def probe(call: _BoundedCall) -> tuple[bool, str]:
        connection = connect(uri)
        try:
            domain = connection.createXML(xml, 0)
        except libvirt.libvirtError as error:
            return False, f"could not start: {_libvirt_error_message(error)}"
        # The clock starts once the guest runs: on a fresh host libvirtd may first spend a
        # minute probing QEMU's capabilities inside createXML, which is not boot time.
        started = time.monotonic()
        try:
            while time.monotonic() - started < timeout and not call.given_up():
                try:
                    with open(serial_log, "rb") as log:
                        if marker.encode() in log.read():
                            return True, f"booted in {time.monotonic() - started:.1f} s"
                except FileNotFoundError:
                    pass
                try:
                    state = _state_of(domain)
                except libvirt.libvirtError:
                    return False, "the guest vanished during boot"
                if state in (DomainState.CRASHED, DomainState.SHUTOFF):
                    return False, f"the guest stopped during boot ({state.value})"
                if state == DomainState.PAUSED:
                    # KVM pauses a guest on an internal error ("emulation failure").
                    return False, "the guest was paused by an emulation error during boot"
                time.sleep(0.1)
            return False, f"no boot marker after {timeout:.0f} s"
        finally:
            try:
                domain.destroy()
            except libvirt.libvirtError:
                pass

    return _bounded(uri, "boot probe", probe, 3 * call_timeout_seconds() + timeout)


LifecycleCallback = Callable[[str, str, DomainState], None]

#: How long the event listener waits for a connection it is opening before it goes back
#: to the hosts it listens to (it looks again at the next refresh).
OPEN_WAIT_SECONDS = 1.0


def run_event_loop(
    uris: Callable[[], Iterable[str]],
    on_change: LifecycleCallback,
    stop: threading.Event,
    *,
    refresh_seconds: float = 5.0,
    on_watch: Callable[[frozenset[str]], None] | None = None,
) -> None:
    """Call `on_change(uri, domain_name, state)` for every lifecycle event on our domains.

    Runs libvirt's default event loop in this thread until `stop` is set. Every
    `refresh_seconds` it asks `uris()` which hosts to listen to, so a hypervisor that is
    added, whose URI changes or that is removed is followed without a restart; connections
    that dropped are reopened at the same time. `on_watch`, if given, is told the URIs
    listened to after each refresh. If `uris()` fails (the database is briefly away), the
    hosts listened to stay as they were.

    One thread serves every host, so it must never wait on one, but an ordinary call
    timeout does not fit either: this thread dispatches the events of all hosts, and
    even a bounded wait on a hung host would hold up the others every refresh. So:
    - opening a connection (the only call with no bound at all) runs in a call thread;
      the loop waits for it at most `OPEN_WAIT_SECONDS` and then looks again at each
      refresh. A host whose daemon hangs costs that once, not at every refresh, and at
      most one opening per host is under way;
    - every call on an open connection is bounded by its keep-alive (5 s, 3 missed):
      libvirt's client closes a connection whose daemon stops answering, even in the
      middle of a call, and the next refresh drops it and opens it again. Local drivers
      have no keep-alive but no daemon to hang either.
    """
    libvirt.virEventRegisterDefaultImpl()
    registered: dict[str, tuple[libvirt.virConnect, int]] = {}
    opening: dict[str, _BoundedCall] = {}

    def callback(
        connection: libvirt.virConnect, domain: libvirt.virDomain, event: int, detail: int, uri: str
    ) -> None:
        name = domain.name()
        if not name.startswith(DOMAIN_PREFIX):
            return
        try:
            state = _state_of(domain)
        except libvirt.libvirtError:
            state = DomainState.MISSING
        if event == libvirt.VIR_DOMAIN_EVENT_UNDEFINED:
            state = DomainState.MISSING
        try:
            on_change(uri, name, state)
        except Exception:  # the loop must survive a failing handler
            logger.exception("lifecycle handler failed for %s on %s", name, uri)

    def unregister(uri: str) -> None:
        connection, callback_id = registered.pop(uri)
        try:
            connection.domainEventDeregisterAny(callback_id)
        except libvirt.libvirtError:
            pass  # the connection is dead already
        try:
            connection.close()
        except libvirt.libvirtError:
            pass

    def alive(uri: str) -> bool:
        try:
            return bool(registered[uri][0].isAlive())
        except libvirt.libvirtError:
            return False

    def listen(uri: str) -> Callable[[_BoundedCall], tuple[libvirt.virConnect, int]]:
        def work(_call: _BoundedCall) -> tuple[libvirt.virConnect, int]:
            connection = libvirt.open(uri)
            try:
                # A dead remote host is noticed in seconds, not at the next TCP timeout.
                # Local drivers (test:///, qemu:/// in-process) have no keep-alive.
                connection.setKeepAlive(5, 3)
            except libvirt.libvirtError:
                pass
            try:
                callback_id = connection.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, callback, uri
                )
            except libvirt.libvirtError:
                connection.close()
                raise
            return connection, callback_id

        return work

    def collect(uri: str, wanted: set[str]) -> None:
        """Take the outcome of a finished opening of `uri`."""
        call = opening.pop(uri)
        if call.error is not None:
            error = call.error
            message = (
                _libvirt_error_message(error)
                if isinstance(error, libvirt.libvirtError)
                else str(error)
            )
            logger.warning("cannot listen to %s: %s", uri, message)
            return
        registered[uri] = call.result  # type: ignore[assignment]
        if uri not in wanted:
            unregister(uri)  # removed while it was being opened
            return
        logger.info("listening to lifecycle events of %s", uri)

    def refresh() -> None:
        try:
            wanted = set(uris())
        except Exception as error:
            logger.warning(
                "cannot read the hypervisors to listen to (%s); keeping the current ones", error
            )
            wanted = set(registered) | set(opening)
        for uri in [uri for uri in registered if uri not in wanted or not alive(uri)]:
            unregister(uri)
            if uri not in wanted:
                logger.info("stopped listening to %s", uri)
        started = []
        for uri in sorted(wanted - set(registered) - set(opening)):
            opening[uri] = _BoundedCall(uri, listen(uri))
            _call_threads.submit(opening[uri])
            started.append(opening[uri])
        deadline = time.monotonic() + OPEN_WAIT_SECONDS
        for call in started:
            call.finished.wait(max(deadline - time.monotonic(), 0.0))
        for uri in [uri for uri, call in opening.items() if call.finished.is_set()]:
            collect(uri, wanted)
        if on_watch is not None:
            on_watch(frozenset(registered))

    # virEventRunDefaultImpl blocks until something happens; a timer makes sure the loop
    # notices `stop` and refreshes the hosts even on a quiet host.
    tick_ms = max(int(min(refresh_seconds, 1.0) * 1000), 50)
    timer = libvirt.virEventAddTimeout(tick_ms, lambda timer, opaque: None, None)
    last_refresh = -math.inf
    try:
        while not stop.is_set():
            if time.monotonic() - last_refresh >= refresh_seconds:
                refresh()
                last_refresh = time.monotonic()
            libvirt.virEventRunDefaultImpl()
    finally:
        libvirt.virEventRemoveTimeout(timer)
        for uri in [uri for uri, call in opening.items() if call.finished.is_set()]:
            collect(uri, set())
        # An opening still under way belongs to a hung host; it ends with the process.
        for uri in list(registered):
            unregister(uri)


def set_graphics_password(
    uri: str,
    name: str,
    *,
    graphics_type: str,
    password: str,
    valid_until: float | None = None,
) -> None:
    """Change the SPICE or VNC password of a running guest, optionally until `valid_until`
    (a POSIX timestamp).

    QEMU checks the password and its expiry when a client connects; viewers already
    connected stay connected (`connected='keep'`). The persistent definition is untouched:
    the next start sets a fresh password anyway.
    """

    def update(connection: libvirt.virConnect) -> None:
        domain = _lookup(connection, name)
        root = ET.fromstring(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE))
        graphics = root.find(f"./devices/graphics[@type='{graphics_type}']")
        if graphics is None:
            raise DriverError(f"{name} has no {graphics_type} display")
        graphics.set("passwd", password)
        if valid_until is not None:
            # libvirt reads this time as UTC.
            graphics.set(
                "passwdValidTo", time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(valid_until))
            )
        else:
            graphics.attrib.pop("passwdValidTo", None)
        graphics.set("connected", "keep")
        domain.updateDeviceFlags(
            ET.tostring(graphics, encoding="unicode"), libvirt.VIR_DOMAIN_AFFECT_LIVE
        )

    _call(uri, f"set the {graphics_type} password of {name}", update)


@dataclass(frozen=True)
class HostSample:
    """One stats sample of a host, for the fleet monitor.

    `free_memory_mib` counts what guests can have at once (free plus page cache), and is
    None when the driver cannot tell (libvirt's test driver). The CPU counters are
    libvirt's cumulative nanoseconds over every CPU; the load is the busy share between
    two samples. None when the driver does not report them.
    """

    hostname: str
    cpus: int
    memory_mib: int
    free_memory_mib: int | None
    running_domains: int
    cpu_busy_ns: int | None
    cpu_total_ns: int | None


def host_sample(uri: str) -> HostSample:
    def read(connection: libvirt.virConnect) -> HostSample:
        _model, memory_mib, cpus, *_rest = connection.getInfo()
        free_mib: int | None = None
        try:
            # getInfo and getFreeMemory see NUMA node memory only, which on some machines
            # is a fraction of the host's; the node's memory stats see all of it.
            stats = connection.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS)
            memory_mib = int(stats["total"]) // 1024
            available_kib = sum(int(stats.get(key, 0)) for key in ("free", "buffers", "cached"))
            free_mib = available_kib // 1024
        except (libvirt.libvirtError, KeyError):
            try:
                free_bytes = connection.getFreeMemory()
                free_mib = int(free_bytes) // (1024 * 1024) if free_bytes > 0 else None
            except libvirt.libvirtError:
                free_mib = None
        busy_ns: int | None = None
        total_ns: int | None = None
        try:
            times = connection.getCPUStats(libvirt.VIR_NODE_CPU_STATS_ALL_CPUS)
            busy_ns = int(times.get("kernel", 0)) + int(times.get("user", 0))
            total_ns = busy_ns + int(times.get("idle", 0)) + int(times.get("iowait", 0))
        except libvirt.libvirtError:
            pass
        running = len(connection.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE))
        return HostSample(
            hostname=connection.getHostname(),
            cpus=cpus,
            memory_mib=memory_mib,
            free_memory_mib=free_mib,
            running_domains=running,
            cpu_busy_ns=busy_ns,
            cpu_total_ns=total_ns,
        )

    return _call(uri, "host stats", read)


def migrate_domain(
    source_uri: str,
    target_uri: str,
    name: str,
    *,
    live: bool = True,
    target_address: str = "",
    trust_shared_storage: bool = False,
    timeout: float = 300.0,
) -> None:
    """Move a running domain to another host; with `live` the guest keeps running.

    The disks stay where they are: both hosts must see them at the same paths (shared
    storage). libvirt trusts only cluster file systems it recognises, so
    `trust_shared_storage` (the administrator marked the pool shared) skips that check.
    The definition moves with the guest: persistent on the target, gone from the source.
    `target_address` is where the source sends the memory (the target listens there);
    blank lets libvirt use the target's host name. A migration that does not finish
    within `timeout` is aborted and the guest goes on running on the source.

    Not bounded by the ordinary call timeout: a live migration of a busy guest takes
    minutes. The wait is `timeout` (when the abort is sent) plus one call timeout for the
    abort to take effect; past that the source daemon counts as hung. The target is
    reached first with the ordinary timeout, so a hung target fails at once.
    """
    target = _call(target_uri, f"connect to {target_uri}", lambda connection: connection)
    flags = libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    if live:
        flags |= libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_AUTO_CONVERGE
    if trust_shared_storage:
        flags |= libvirt.VIR_MIGRATE_UNSAFE
    params: dict[str, str] = {}
    if target_address:
        host = f"[{target_address}]" if ":" in target_address else target_address
        params[libvirt.VIR_MIGRATE_PARAM_URI] = f"tcp://{host}"
        params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] = target_address

    def migrate(connection: libvirt.virConnect) -> None:
        domain = _lookup(connection, name)

        def abort() -> None:
            try:
                domain.abortJob()
            except libvirt.libvirtError:
                pass  # it finished meanwhile

        timer = threading.Timer(timeout, abort)
        timer.daemon = True
        timer.start()
        try:
            domain.migrate3(target, params, flags)
        finally:
            timer.cancel()

    _call(
        source_uri,
        f"migrate {name} to {target_uri}",
        migrate,
        timeout=timeout + call_timeout_seconds(),
    )


@dataclass(frozen=True)
class GuestAddress:
    """One IP address of a running guest, and who reported it."""

    interface: str
    mac: str
    address: str
    version: int  # 4 or 6
    source: str  # "agent" (the guest itself), "lease" (libvirt's DHCP server) or "arp"


#: What `virDomain.interfaceAddresses` returns: interface name -> {"hwaddr": ...,
#: "addrs": [{"type": ..., "addr": ..., "prefix": ...}]}.
InterfaceAddresses = Mapping[str, Mapping[str, Any]]

#: Where a guest's addresses come from, best first. The agent knows every address (static
#: ones and those on bridged networks too) but runs only in guests that have it installed;
#: the leases cover guests on a libvirt network with DHCP; the host's ARP table (read by
#: the daemon, no guest involved) covers guests the host has exchanged packets with.
ADDRESS_SOURCES = (
    ("agent", libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT),
    ("lease", libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE),
    ("arp", libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP),
)

#: How long libvirt waits for the guest agent's answer (its default is to block). An
#: agent that is installed but stuck (a guest under heavy load, a hung service) then costs
#: the RDP download this much before the leases are asked; a guest without an agent costs
#: nothing, libvirt knows the agent has not opened its port and says so at once.
AGENT_TIMEOUT_SECONDS = 3


def usable_addresses(source: str, interfaces: InterfaceAddresses) -> list[GuestAddress]:
    """The addresses in one libvirt answer that a client elsewhere could connect to.

    Loopback, link-local (169.254/16, fe80::/10), unspecified and multicast addresses are
    left out. IPv4 first: it is what RDP clients on school networks reach most often;
    otherwise in interface order, as the source reported them.
    """
    import ipaddress

    found = []
    for interface, details in sorted(interfaces.items()):
        for entry in details.get("addrs") or []:
            try:
                address = ipaddress.ip_address(entry.get("addr") or "")
            except ValueError:
                continue
            if (
                address.is_loopback
                or address.is_link_local
                or address.is_unspecified
                or address.is_multicast
            ):
                continue
            found.append(
                GuestAddress(
                    interface=interface,
                    mac=details.get("hwaddr") or "",
                    address=str(address),
                    version=address.version,
                    source=source,
                )
            )
    return sorted(found, key=lambda address: address.version)  # stable: keeps the order


def choose_addresses(
    answers: Iterable[tuple[str, InterfaceAddresses | None]],
) -> list[GuestAddress]:
    """The usable addresses of the first source that has any (see `usable_addresses`).

    `answers` are (source, libvirt's answer or None when the source failed), best source
    first; it is read lazily, so a generator that asks libvirt asks no further than the
    first source with an address. An empty list: no source reported one.
    """
    for source, interfaces in answers:
        found = usable_addresses(source, interfaces or {})
        if found:
            return found
    return []


def choose_address(answers: Iterable[tuple[str, InterfaceAddresses | None]]) -> GuestAddress | None:
    """The address to connect to: the first of `choose_addresses`, or None."""
    found = choose_addresses(answers)
    return found[0] if found else None


def domain_ip_addresses(
    uri: str,
    name: str,
    *,
    agent_timeout: int = AGENT_TIMEOUT_SECONDS,
    sources: Iterable[str] = ("agent", "lease", "arp"),
) -> list[GuestAddress]:
    """The running guest's usable IP addresses, IPv4 first, from the first source that has
    any: its guest agent, else libvirt's DHCP leases, else the host's ARP table.

    An empty list means the guest has not reported any address (yet). The agent is given
    `agent_timeout` seconds (`virDomainAgentSetResponseTimeout`, a setting of the running
    domain; nothing else here talks to the agent), so a stuck agent delays the answer by
    that much and does not trip the call timeout that would take the host for hung.
    `sources` narrows the sources asked (in `ADDRESS_SOURCES` order), to time one alone.
    """
    wanted = set(sources)
    flags = [(source, flag) for source, flag in ADDRESS_SOURCES if source in wanted]

    def read(connection: libvirt.virConnect) -> list[GuestAddress]:
        domain = _lookup(connection, name)
        try:
            domain.agentSetResponseTimeout(agent_timeout, 0)
        except libvirt.libvirtError as error:
            if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise
            # The test driver has no agent timeout; a real daemon without one is < 5.10.
            logger.debug("%s: agent timeout not set: %s", name, error)

        def answers() -> Iterator[tuple[str, InterfaceAddresses | None]]:
            for source, flag in flags:
                try:
                    yield source, domain.interfaceAddresses(flag) or {}
                except libvirt.libvirtError as error:
                    if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                        raise
                    # No agent in the guest, agent not answering, no libvirt network.
                    logger.debug("%s: no addresses from the %s: %s", name, source, error)
                    yield source, None

        return choose_addresses(answers())

    return _call(uri, f"addresses of {name}", read)
