"""Keeping the database equal to what the hypervisors run, and settling desktops whose task died."""

from __future__ import annotations

import logging
import uuid as uuid_module
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path

from django.db import transaction
from django.utils import timezone

from desktops.choices import TRANSITIONS, DesktopStatus
from desktops.models import Desktop
from desktops.services.orphans import domains_remove_orphans
from desktops.services.transitions import desktop_event_record, desktop_transition
from hypervisors.drivers import libvirt_driver
from hypervisors.models import Disk, Hypervisor
from hypervisors.services.disks import disk_refresh_actual_size
from isard.core.errors import (
    ConflictError,
    InfrastructureError,
)

logger = logging.getLogger(__name__)


S = DesktopStatus


def desktop_sync_state(
    *, desktop: Desktop, state: libvirt_driver.DomainState, source: str
) -> Desktop:
    """Apply what a hypervisor reports about a desktop's domain."""
    DomainState = libvirt_driver.DomainState
    status = DesktopStatus(desktop.status)
    target: DesktopStatus | None = None
    reason = ""
    if state == DomainState.RUNNING and status in (S.STARTING, S.STOPPED, S.FAILED, S.UNKNOWN):
        target, reason = S.STARTED, f"running ({source})"
    elif state == DomainState.SHUTOFF and status in (
        S.STARTED,
        S.SHUTTING_DOWN,
        S.STOPPING,
        S.UNKNOWN,
    ):
        target = S.STOPPED
        reason = (
            "" if status in (S.SHUTTING_DOWN, S.STOPPING) else f"the guest powered off ({source})"
        )
    elif state == DomainState.CRASHED and status in (S.STARTED, S.SHUTTING_DOWN, S.UNKNOWN):
        target = S.FAILED
        reason = f"its operating system crashed ({source}); start it again"
    elif state == DomainState.CRASHED and status == S.STOPPING:
        target = S.STOPPED  # it was being forced off anyway
    elif state == DomainState.MISSING and status in (
        S.STARTED,
        S.SHUTTING_DOWN,
        S.STOPPING,
        S.UNKNOWN,
    ):
        target, reason = S.FAILED, f"its domain vanished from the hypervisor ({source})"
    if target is None or target not in TRANSITIONS[status]:
        return desktop
    try:
        desktop = desktop_transition(desktop=desktop, to=target, reason=reason)
    except ConflictError:
        desktop.refresh_from_db()
        return desktop
    if target == S.STOPPED and desktop.disk_id is not None:
        disk_refresh_actual_size(disk_id=desktop.disk_id)
    return desktop


def desktop_for_domain(domain_name: str) -> Desktop | None:
    prefix = libvirt_driver.DOMAIN_PREFIX
    if not domain_name.startswith(prefix):
        return None
    try:
        return Desktop.objects.filter(uuid=domain_name[len(prefix) :]).first()
    except (ValueError, Exception):
        return None


def desktops_reconcile(*, hypervisor: Hypervisor, now: datetime | None = None) -> int:
    """Compare every desktop placed on `hypervisor` with what it really runs.

    Returns how many desktops changed; domains that no live desktop owns are removed
    along the way (`desktops.services.orphans`).
    """
    try:
        states = libvirt_driver.list_domain_states(hypervisor.uri)
    except libvirt_driver.DriverError as error:
        raise InfrastructureError(str(error)) from error
    changed = 0
    watched: Iterable[Desktop] = Desktop.objects.filter(
        hypervisor=hypervisor,
        status__in=[S.STARTED, S.SHUTTING_DOWN, S.STOPPING, S.UNKNOWN, S.STOPPED, S.FAILED],
    )
    for desktop in watched:
        state = states.get(desktop.domain_name, libvirt_driver.DomainState.MISSING)
        if state == libvirt_driver.DomainState.MISSING and desktop.status in (S.STOPPED, S.FAILED):
            continue  # a stopped desktop is redefined at its next start
        before = desktop.status
        after = desktop_sync_state(desktop=desktop, state=state, source="reconciliation").status
        changed += before != after
    changed += _follow_guests_running_here(hypervisor=hypervisor, states=states)
    domains_remove_orphans(hypervisor=hypervisor, states=states, now=now)
    return changed


def _follow_guests_running_here(
    *, hypervisor: Hypervisor, states: dict[str, libvirt_driver.DomainState]
) -> int:
    """Desktops whose guest runs on `hypervisor` while their record names another host.

    A live migration the platform gave up on (its source answered too late) may still
    finish; so may one that ran while a worker died. Left alone, the desktop would say
    failed ("vanished" from its old host) while its guest runs here, and its next start
    would boot the same disk a second time. So the desktop follows its guest, once its
    recorded host confirms that it does not run it as well. Returns how many moved.
    """
    running: set[uuid_module.UUID] = set()
    for name, state in states.items():
        if state != libvirt_driver.DomainState.RUNNING:
            continue
        try:
            running.add(uuid_module.UUID(name.removeprefix(libvirt_driver.DOMAIN_PREFIX)))
        except ValueError:
            continue  # not one of ours (a benchmark's or a person's domain)
    if not running:
        return 0
    strays = (
        Desktop.objects.filter(uuid__in=running)
        .exclude(hypervisor=hypervisor)
        .exclude(status__in=[S.DELETING, S.DELETED])
        .select_related("hypervisor")
    )
    followed = 0
    for desktop in strays:
        recorded = desktop.hypervisor
        if recorded is not None:
            try:
                there = libvirt_driver.domain_state(recorded.uri, desktop.domain_name)
            except libvirt_driver.DriverError as error:
                logger.warning(
                    "%s runs on %s but its record says %s, which does not answer (%s); "
                    "left for the next reconciliation",
                    desktop.domain_name,
                    hypervisor.name,
                    recorded.name,
                    error,
                )
                continue
            if there in (libvirt_driver.DomainState.RUNNING, libvirt_driver.DomainState.PAUSED):
                logger.error(
                    "%s runs on both %s and %s: left as it is for an administrator",
                    desktop.domain_name,
                    hypervisor.name,
                    recorded.name,
                )
                continue
        with transaction.atomic():
            moved = Desktop.objects.filter(pk=desktop.pk, hypervisor=recorded).update(
                hypervisor=hypervisor
            )
            if moved:
                desktop_event_record(
                    desktop,
                    f"found running on {hypervisor.name}, not on "
                    f"{recorded.name if recorded else 'any host'}: placed there",
                )
        if moved:
            desktop.refresh_from_db()
            desktop_sync_state(
                desktop=desktop, state=libvirt_driver.DomainState.RUNNING, source="reconciliation"
            )
            followed += 1
    return followed


#: How long a desktop may stay in a busy status before it is considered stuck.
STUCK_AFTER = timedelta(minutes=5)


#: How long the stuck-desktop sweep waits for one host's libvirt before moving on.
RECOVERY_LIBVIRT_TIMEOUT_SECONDS = 5.0


def desktops_recover_stuck(*, now: datetime | None = None) -> int:
    """Settle desktops whose task died mid-way (a worker killed, a database error).

    A busy status normally lasts seconds. Past `STUCK_AFTER`, what the hypervisor really
    runs decides when it can (a start that did happen becomes STARTED); otherwise the
    desktop fails with a reason that says what to do. A desktop that was being created
    loses what its task had made (see `_recover_creation`); nothing else is deleted. A
    host that does not answer costs the sweep `RECOVERY_LIBVIRT_TIMEOUT_SECONDS`, once.
    """
    limit = (now or timezone.now()) - STUCK_AFTER
    stuck = Desktop.objects.filter(
        status__in=[
            S.CREATING,
            S.STARTING,
            S.STOPPING,
            S.DELETING,
            S.CREATING_TEMPLATE,
            S.RESETTING,
        ],
        status_changed_at__lt=limit,
    ).select_related("hypervisor")
    settled = 0
    silent_hosts: set[int] = set()
    for desktop in stuck:
        state = libvirt_driver.DomainState.OTHER
        host = desktop.hypervisor
        host_answers = host is not None and host.pk not in silent_hosts
        if host is not None and host_answers:
            try:
                state = libvirt_driver.domain_state(
                    host.uri, desktop.domain_name, timeout=RECOVERY_LIBVIRT_TIMEOUT_SECONDS
                )
            except libvirt_driver.HypervisorHungError:
                silent_hosts.add(host.pk)
                host_answers = False
            except libvirt_driver.DriverError:
                host_answers = False
        running = state == libvirt_driver.DomainState.RUNNING
        off = state in (libvirt_driver.DomainState.SHUTOFF, libvirt_driver.DomainState.MISSING)
        try:
            if desktop.status == S.STARTING and running:
                desktop_transition(desktop=desktop, to=S.STARTED, reason="recovered: it is running")
            elif desktop.status == S.STOPPING and off:
                desktop_transition(desktop=desktop, to=S.STOPPED, reason="recovered: it is off")
            elif desktop.status == S.CREATING:
                _recover_creation(desktop, host_answers=host_answers)
            else:
                action = DesktopStatus(desktop.status).label.lower()
                desktop_transition(
                    desktop=desktop,
                    to=S.FAILED,
                    reason=f"“{action}” did not finish (the worker may have stopped); try again.",
                )
            settled += 1
        except ConflictError:
            continue  # it moved on by itself meanwhile
    return settled


def _recover_creation(desktop: Desktop, *, host_answers: bool) -> None:
    """Fail a provisioning that died mid-way and remove its half-made disk and domain.

    The failure is recorded first (a conditional update): a provisioning that was only
    slow and finishes later then finds the desktop failed and changes nothing. What it
    had made is removed after: the overlay file and its row, and the domain on the host
    it was placed on. If that host does not answer, the desktop keeps its host, so that
    deleting the desktop later removes the domain there. The desktop has nothing of its
    own yet, so nothing is lost.
    """
    disk = Disk.objects.filter(pk=desktop.disk_id).first() if desktop.disk_id else None
    hypervisor = desktop.hypervisor
    undefined = False
    desktop_transition(
        desktop=desktop,
        to=S.FAILED,
        reason="“creating” did not finish (the worker may have stopped); delete it and "
        "create it again.",
        disk=None,
    )
    if hypervisor is not None and host_answers:
        try:
            libvirt_driver.undefine_domain(
                hypervisor.uri, desktop.domain_name, timeout=RECOVERY_LIBVIRT_TIMEOUT_SECONDS
            )
            undefined = True
        except libvirt_driver.DriverError as error:
            logger.warning("could not undefine %s: %s", desktop.domain_name, error)
    if hypervisor is None or undefined:
        Desktop.objects.filter(pk=desktop.pk).update(hypervisor=None)
        desktop.hypervisor = None
    if disk is not None:
        Path(disk.path).unlink(missing_ok=True)
        disk.delete()
