"""Watching the hosts: a sample of each, online or offline, and what that means for the
desktops on them; the reconciliation of each host's desktops with what it runs."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from datetime import datetime
from typing import TYPE_CHECKING

from django.utils import timezone

from desktops import task_calls
from desktops.choices import DesktopStatus
from desktops.fleet.selectors import (
    BOOKED_STATUSES,
)
from desktops.models import Desktop
from desktops.services.reconciliation import desktops_reconcile
from desktops.services.transitions import desktops_transition
from hypervisors.choices import (
    HypervisorState,
)
from hypervisors.drivers import libvirt_driver
from hypervisors.fleet import fleet_settings
from hypervisors.models import (
    Hypervisor,
    HypervisorEvent,
)
from hypervisors.routing import default_queue, hypervisor_queue
from hypervisors.services.load import host_load_keep
from isard.core.errors import InfrastructureError
from isard.core.tasks import send_after_commit

if TYPE_CHECKING:
    pass


logger = logging.getLogger(__name__)


def hypervisor_refresh(*, hypervisor: Hypervisor, now: datetime | None = None) -> Hypervisor:
    """Sample the host once and record what it said, or that it did not answer.

    A host that stops answering stays online for `ISARD_HYPERVISOR_OFFLINE_GRACE_SECONDS`
    (though nothing new is placed there) before it is marked offline and its running
    desktops unknown; see `hypervisor_record_silence`.
    """
    try:
        sample = libvirt_driver.host_sample(hypervisor.uri)
    except libvirt_driver.DriverError as error:
        return hypervisor_record_silence(hypervisor=hypervisor, error=str(error), now=now)
    return hypervisor_record_sample(hypervisor=hypervisor, sample=sample, now=now)


def _booked_memory_mib(hypervisor: Hypervisor) -> int:
    sizes = Desktop.objects.filter(hypervisor=hypervisor, status__in=BOOKED_STATUSES).values_list(
        "hardware__memory_mib", flat=True
    )
    return sum(sizes)


def hypervisor_record_sample(
    *, hypervisor: Hypervisor, sample: libvirt_driver.HostSample, now: datetime | None = None
) -> Hypervisor:
    """Record a stats sample: the host is online, and starts charged to it are now visible."""
    now = now or timezone.now()
    cpu_load = hypervisor.cpu_load
    if sample.cpu_busy_ns is not None and sample.cpu_total_ns is not None:
        busy = sample.cpu_busy_ns - hypervisor.cpu_busy_ns
        total = sample.cpu_total_ns - hypervisor.cpu_total_ns
        if hypervisor.cpu_total_ns and total > 0 and busy >= 0:
            cpu_load = min(busy / total, 1.0)
    free_memory_mib = sample.free_memory_mib
    if free_memory_mib is None:
        # The driver cannot tell (libvirt's test driver): assume the booked desktops use
        # what they were given and the rest is free.
        free_memory_mib = max(sample.memory_mib - _booked_memory_mib(hypervisor), 0)
    came_back = hypervisor.state == HypervisorState.OFFLINE
    Hypervisor.objects.filter(pk=hypervisor.pk).update(
        state=HypervisorState.ONLINE,
        last_error="",
        last_seen_at=now,
        unreachable_since=None,
        cpus=sample.cpus,
        memory_mib=sample.memory_mib,
        free_memory_mib=free_memory_mib,
        running_domains=sample.running_domains,
        cpu_load=cpu_load,
        cpu_busy_ns=sample.cpu_busy_ns or 0,
        cpu_total_ns=sample.cpu_total_ns or 0,
    )
    if came_back:
        HypervisorEvent.objects.create(
            hypervisor=hypervisor, message="answers again; its desktops are being reconciled"
        )
        logger.info("hypervisor %s answers again", hypervisor.name)
    hypervisor.refresh_from_db()
    host_load_keep(hypervisor=hypervisor, now=now)
    return hypervisor


def hypervisor_record_silence(
    *, hypervisor: Hypervisor, error: str, now: datetime | None = None
) -> Hypervisor:
    """Record that the host did not answer; past the grace, mark it and its desktops.

    From the first failed contact nothing new is placed there (the snapshot treats it as
    offline). Once it has been silent for `ISARD_HYPERVISOR_OFFLINE_GRACE_SECONDS` (at
    once if it was never seen), it becomes offline and its running desktops unknown: the
    guests may well still run, we just cannot tell. When it answers again, the
    reconciliation sets each desktop from what the host really runs.
    """
    now = now or timezone.now()
    libvirt_driver.forget_connection(hypervisor.uri)
    Hypervisor.objects.filter(pk=hypervisor.pk, unreachable_since__isnull=True).update(
        unreachable_since=now
    )
    Hypervisor.objects.filter(pk=hypervisor.pk).update(last_error=error)
    hypervisor.refresh_from_db()
    assert hypervisor.unreachable_since is not None
    silent_seconds = (now - hypervisor.unreachable_since).total_seconds()
    grace = fleet_settings().offline_grace_seconds
    never_seen = hypervisor.state == HypervisorState.UNKNOWN
    if hypervisor.state != HypervisorState.OFFLINE and (never_seen or silent_seconds >= grace):
        # Conditional: of two monitors noticing at once, one marks the desktops.
        went_offline = Hypervisor.objects.filter(pk=hypervisor.pk, state=hypervisor.state).update(
            state=HypervisorState.OFFLINE
        )
        if went_offline:
            _desktops_mark_unknown(hypervisor, error=error, silent_seconds=silent_seconds)
        hypervisor.refresh_from_db()
    return hypervisor


def _desktops_mark_unknown(hypervisor: Hypervisor, *, error: str, silent_seconds: float) -> None:
    reason = (
        f"its hypervisor {hypervisor.name} has not answered for {silent_seconds:.0f} s: {error}"
    )
    desktops = list(
        Desktop.objects.filter(
            hypervisor=hypervisor,
            status__in=[
                DesktopStatus.STARTED,
                DesktopStatus.SHUTTING_DOWN,
                DesktopStatus.STOPPING,
            ],
        )
    )
    changed, _conflicts = desktops_transition(
        changes=[(desktop, {}) for desktop in desktops], to=DesktopStatus.UNKNOWN, reason=reason
    )
    HypervisorEvent.objects.create(
        hypervisor=hypervisor,
        message=f"offline after {silent_seconds:.0f} s without an answer ({error}); "
        f"{len(changed)} desktops marked unknown",
    )
    logger.warning("hypervisor %s is offline: %s", hypervisor.name, error)


def hypervisors_monitor(*, now: datetime | None = None) -> dict[str, str]:
    """Sample every host at once and record each; returns each host's state.

    The libvirt calls run in threads, so one host that hangs (a remote host whose network
    went away) costs the others nothing: past `ISARD_HYPERVISOR_SAMPLE_TIMEOUT_SECONDS` it
    counts as silent. The database is written from this thread only.
    """
    hypervisors = list(Hypervisor.objects.order_by("pk"))
    if not hypervisors:
        return {}
    timeout = fleet_settings().sample_timeout_seconds
    executor = ThreadPoolExecutor(max_workers=min(len(hypervisors), 16))
    try:
        futures = {
            hypervisor.pk: executor.submit(libvirt_driver.host_sample, hypervisor.uri)
            for hypervisor in hypervisors
        }
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        for hypervisor in hypervisors:
            try:
                sample = futures[hypervisor.pk].result(
                    timeout=max(deadline - time.monotonic(), 0.0)
                )
            except FutureTimeoutError:
                hypervisor = hypervisor_record_silence(
                    hypervisor=hypervisor, error=f"no answer within {timeout:.0f} s", now=now
                )
            except libvirt_driver.DriverError as error:
                hypervisor = hypervisor_record_silence(
                    hypervisor=hypervisor, error=str(error), now=now
                )
            else:
                hypervisor = hypervisor_record_sample(hypervisor=hypervisor, sample=sample, now=now)
            states[hypervisor.name] = hypervisor.state
        return states
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


#: A reconciliation sent to a host's own worker that has not started by then is dropped:
#: the next beat sends a fresh one, so a host whose worker is down does not pile them up.
RECONCILE_EXPIRES_SECONDS = 30


def fleet_reconcile_all() -> dict[str, int]:
    """Sample every host, then reconcile the desktops of each host that answered.

    A host silent beyond the grace goes offline and its desktops unknown; one that
    answers again gets its desktops' statuses from what it really runs. The sampling
    stays on the central worker: a host that is down cannot report its own silence.
    The reconciliation of a host with its own worker runs on that worker. Returns the
    number of desktops changed per host reconciled here.
    """
    hypervisors_monitor()
    changes: dict[str, int] = {}
    for hypervisor in Hypervisor.objects.filter(
        state=HypervisorState.ONLINE, unreachable_since__isnull=True
    ):
        if hypervisor_queue(hypervisor) != default_queue():
            send_after_commit(
                task_calls.reconcile_hypervisor(
                    hypervisor=hypervisor, expires=RECONCILE_EXPIRES_SECONDS
                )
            )
            continue
        try:
            changes[hypervisor.name] = desktops_reconcile(hypervisor=hypervisor)
        except InfrastructureError as error:
            logger.warning("reconciling %s failed: %s", hypervisor.name, error.message)
    return changes


def hypervisor_reconcile(*, hypervisor_id: int) -> int:
    """Reconcile one host's desktops with what it runs (on the host's own worker)."""
    hypervisor = Hypervisor.objects.filter(pk=hypervisor_id).first()
    if hypervisor is None or hypervisor.state != HypervisorState.ONLINE:
        return 0
    try:
        return desktops_reconcile(hypervisor=hypervisor)
    except InfrastructureError as error:
        # The central monitor decides whether the host is gone; the next beat retries.
        logger.warning("reconciling %s failed: %s", hypervisor.name, error.message)
        return 0
