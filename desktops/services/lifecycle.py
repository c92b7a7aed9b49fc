"""Starting and stopping desktops."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.db import transaction

from accounts.models import User
from accounts.quotas import quota_check, start_change
from desktops import task_calls
from desktops.choices import DesktopStatus
from desktops.fleet.placement import (
    choose_hypervisor,
    hypervisor_hand_off,
)
from desktops.fleet.selectors import desktop_live_migration_target
from desktops.models import Desktop
from desktops.permissions import can_act_on_desktop
from desktops.services.domains import desktop_define, new_graphics_password
from desktops.services.reconciliation import desktop_sync_state
from desktops.services.sessions import session_fields
from desktops.services.transitions import (
    check_can_act,
    desktop_event_record,
    desktop_fail,
    desktop_transition,
    undo_transition,
)
from hypervisors import qemu_img
from hypervisors.drivers import libvirt_driver
from hypervisors.models import Disk, Hypervisor
from hypervisors.paths import PathOutsidePoolsError
from hypervisors.services.disks import disk_refresh_actual_size
from isard.core import metrics
from isard.core.errors import (
    ConflictError,
    InfrastructureError,
    NoCapacityError,
    NotFoundError,
)
from isard.core.tasks import TaskCall, send_after_commit

logger = logging.getLogger(__name__)


S = DesktopStatus


def missing_disk_files(disk: Disk | None) -> list[str]:
    """The files of `disk` and of the template disks under it that cannot be opened.

    A stat and an open per level (no subprocess): cheap enough for every start. A disk
    deleted or made unreadable behind isard's back is found here, before any status
    changes, instead of by qemu in front of a class.
    """
    missing: list[str] = []
    seen: set[int] = set()
    while disk is not None and disk.pk not in seen:
        seen.add(disk.pk)
        try:
            with open(disk.path, "rb") as image:
                image.read(4)
        except OSError as error:
            missing.append(f"{disk.path} ({error.strerror or error})")
        disk = disk.parent
    return missing


def desktop_start(*, actor: User, desktop: Desktop) -> Desktop:
    """Ask for the desktop to start. Starting one that is already starting is a no-op."""
    check_can_act(actor, desktop)
    if desktop.status in (S.STARTING, S.STARTED):
        return desktop
    if desktop.status not in (S.STOPPED, S.FAILED):
        raise ConflictError(
            f"The desktop “{desktop.name}” is {DesktopStatus(desktop.status).label.lower()}; "
            "it cannot start now.",
            extra={"status": desktop.status},
        )
    missing = missing_disk_files(desktop.disk)
    if missing:
        logger.error("desktop %s cannot start, missing: %s", desktop.pk, "; ".join(missing))
        raise ConflictError(
            f"The desktop “{desktop.name}” cannot start: the disk or its template is missing "
            f"({'; '.join(missing)}). Nothing was changed; an administrator must restore it.",
            extra={"missing": missing},
        )
    previous = DesktopStatus(desktop.status)
    try:
        with transaction.atomic():
            quota_check(
                owner=desktop.owner,
                actor=actor,
                course=desktop.course,
                change=start_change(desktop.hardware),
            )
            desktop_transition(
                desktop=desktop,
                to=S.STARTING,
                actor=actor,
                graphics_password=new_graphics_password(),
                **session_fields(desktop),
            )
            send_after_commit(
                task_calls.start_desktop(desktop_id=desktop.pk),
                undo=undo_transition(desktop, previous),
            )
    except ConflictError:
        desktop.refresh_from_db()
        if desktop.status in (S.STARTING, S.STARTED):
            return desktop  # a concurrent request won: the desktop starts once
        raise
    return desktop


def desktop_boot(*, desktop_id: int, hypervisor_id: int | None = None) -> Desktop:
    """Place, (re)define and start the domain of a desktop that is STARTING.

    With `hypervisor_id` the desktop was already placed (and charged) there by a first
    call, which handed the libvirt work to that host's own worker.
    """
    desktop = Desktop.objects.select_related("disk", "hardware", "hypervisor", "owner").get(
        pk=desktop_id
    )
    if desktop.status != S.STARTING:
        return desktop
    if desktop.disk is None:
        return desktop_fail(desktop, "The desktop has no disk.")
    try:
        qemu_img.backing_chain(Path(desktop.disk.path))
    except qemu_img.QemuImgError as error:
        return desktop_fail(desktop, f"The desktop's disk or its template is missing: {error}")
    if hypervisor_id is not None:
        placed_on = Hypervisor.objects.filter(pk=hypervisor_id).first()
        if placed_on is None:
            return desktop_fail(desktop, "The hypervisor it was placed on is no longer registered.")
        hypervisor = placed_on
    else:
        try:
            hypervisor = choose_hypervisor(
                memory_mib=desktop.hardware.memory_mib,
                vcpus=desktop.hardware.vcpus,
                desktop=desktop,
            )
        except NoCapacityError as error:
            return desktop_fail(desktop, error.message)
        handed = task_calls.boot_desktop(desktop_id=desktop.pk, hypervisor=hypervisor)
        if hypervisor_hand_off(hypervisor=hypervisor, call=handed):
            return desktop
    previous = desktop.hypervisor
    try:
        if previous is not None and previous.pk != hypervisor.pk:
            try:
                libvirt_driver.undefine_domain(previous.uri, desktop.domain_name)
            except libvirt_driver.DriverError as error:
                logger.warning(
                    "could not undefine %s on %s: %s", desktop.domain_name, previous, error
                )
        # Redefine at every start: a fresh graphics password and the current hardware.
        boot_began = time.monotonic()
        desktop_define(desktop, hypervisor)
        Desktop.objects.filter(pk=desktop.pk).update(hypervisor=hypervisor)
        libvirt_driver.start_domain(hypervisor.uri, desktop.domain_name)
        metrics.observe(
            metrics.DESKTOP_BOOT, time.monotonic() - boot_began, hypervisor=hypervisor.name
        )
    except libvirt_driver.DriverError as error:
        return desktop_fail(desktop, f"Could not start on {hypervisor.name}: {error}")
    except PathOutsidePoolsError as error:
        return desktop_fail(desktop, f"Could not start: {error.message}")
    desktop.refresh_from_db()
    if desktop.status == S.STARTING:
        try:
            desktop_transition(desktop=desktop, to=S.STARTED, hypervisor=hypervisor)
        except ConflictError:
            desktop.refresh_from_db()  # the lifecycle listener was faster
    return desktop


def desktop_shutdown(*, actor: User, desktop: Desktop) -> Desktop:
    """Ask the guest to power off; it is forced off after the configured timeout."""
    check_can_act(actor, desktop)
    return desktop_begin_shutdown(desktop=desktop, actor=actor)


def desktop_begin_shutdown(
    *, desktop: Desktop, actor: User | None = None, reason: str = ""
) -> Desktop:
    """The shutdown itself, for a person (checked above) or the platform (a time limit,
    with the `reason` the event row and the student's card say)."""
    previous = DesktopStatus(desktop.status)
    with transaction.atomic():
        desktop_transition(desktop=desktop, to=S.SHUTTING_DOWN, actor=actor, reason=reason)
        undo = undo_transition(desktop, previous)
        host = desktop.hypervisor
        send_after_commit(
            task_calls.shutdown_desktop(desktop_id=desktop.pk, hypervisor=host), undo=undo
        )
        send_after_commit(
            task_calls.shutdown_timeout(
                desktop_id=desktop.pk,
                hypervisor=host,
                countdown=settings.ISARD_SHUTDOWN_TIMEOUT_SECONDS,
            ),
            undo=undo,
        )
    return desktop


#: How often a shutdown or a force-off looks again while its desktop is live-migrating.
MIGRATION_RECHECK_SECONDS = 2


def _waits_for_migration(desktop: Desktop, again: Callable[..., TaskCall]) -> bool:
    """True if the desktop is being live-migrated: the same work is sent again a bit later.

    Shutting a guest down or forcing it off on its old host mid-migration is refused by
    libvirt (the domain has a job) or hits the copy that is about to go while the new one
    runs on. Sent again, it goes to the worker of the host the guest is moving to, and
    acts wherever the desktop is by then.
    """
    target = desktop_live_migration_target(desktop_id=desktop.pk)
    if target is None:
        return False
    send_after_commit(
        again(desktop_id=desktop.pk, hypervisor=target, countdown=MIGRATION_RECHECK_SECONDS)
    )
    return True


def desktop_send_shutdown(*, desktop_id: int) -> Desktop:
    desktop = Desktop.objects.select_related("hypervisor").get(pk=desktop_id)
    if _waits_for_migration(desktop, task_calls.shutdown_desktop):
        return desktop
    if desktop.status != S.SHUTTING_DOWN or desktop.hypervisor is None:
        return desktop
    try:
        libvirt_driver.shutdown_domain(desktop.hypervisor.uri, desktop.domain_name)
    except libvirt_driver.DriverError as error:
        return desktop_fail(desktop, f"Could not shut down: {error}")
    return desktop


def desktop_shutdown_timeout(*, desktop_id: int) -> Desktop:
    """The guest ignored the ACPI request for too long: force it off."""
    desktop = Desktop.objects.select_related("hypervisor").get(pk=desktop_id)
    if _waits_for_migration(desktop, task_calls.shutdown_timeout):
        return desktop
    if desktop.status != S.SHUTTING_DOWN:
        return desktop
    if desktop.hypervisor is not None:
        try:
            state = libvirt_driver.domain_state(desktop.hypervisor.uri, desktop.domain_name)
        except libvirt_driver.DriverError:
            state = libvirt_driver.DomainState.OTHER
        if state in (libvirt_driver.DomainState.SHUTOFF, libvirt_driver.DomainState.MISSING):
            # It did power off; the lifecycle event has not been applied yet.
            return desktop_sync_state(desktop=desktop, state=state, source="shutdown check")
    desktop_transition(
        desktop=desktop,
        to=S.STOPPING,
        reason="The guest did not shut down in time; forcing it off.",
    )
    desktop.refresh_from_db()
    return _force_off(desktop)


def desktop_stop(*, actor: User, desktop: Desktop) -> Desktop:
    """Force the desktop off at once (pulling the plug)."""
    check_can_act(actor, desktop)
    previous = DesktopStatus(desktop.status)
    with transaction.atomic():
        desktop_transition(desktop=desktop, to=S.STOPPING, actor=actor)
        send_after_commit(
            task_calls.force_off_desktop(desktop_id=desktop.pk, hypervisor=desktop.hypervisor),
            undo=undo_transition(desktop, previous),
        )
    return desktop


def desktop_force_off(*, desktop_id: int) -> Desktop:
    """Pull the plug (run by a task, once the desktop is STOPPING)."""
    desktop = Desktop.objects.select_related("hypervisor").get(pk=desktop_id)
    if _waits_for_migration(desktop, task_calls.force_off_desktop):
        return desktop
    return _force_off(desktop)


def _force_off(desktop: Desktop) -> Desktop:
    if desktop.status != S.STOPPING:
        return desktop
    if desktop.hypervisor is not None:
        try:
            libvirt_driver.destroy_domain(desktop.hypervisor.uri, desktop.domain_name)
        except libvirt_driver.DriverError as error:
            return desktop_fail(desktop, f"Could not force off: {error}")
    desktop.refresh_from_db()
    if desktop.status == S.STOPPING:
        try:
            desktop = desktop_transition(desktop=desktop, to=S.STOPPED)
        except ConflictError:
            desktop.refresh_from_db()
        if desktop.disk_id is not None:
            disk_refresh_actual_size(disk_id=desktop.disk_id)
    return desktop


def desktop_reset(*, actor: User, desktop: Desktop) -> Desktop:
    """Hard-reset a running guest (the reset button); its status does not change."""
    check_can_act(actor, desktop)
    if desktop.status != S.STARTED or desktop.hypervisor is None:
        raise ConflictError(f"The desktop “{desktop.name}” is not running.")
    try:
        libvirt_driver.reset_domain(desktop.hypervisor.uri, desktop.domain_name)
    except libvirt_driver.DriverError as error:
        raise InfrastructureError(f"Could not reset: {error}") from error
    desktop_event_record(desktop, "reset", actor)
    return desktop


def desktop_get(*, actor: User, desktop_id: int) -> Desktop:
    desktop = Desktop.objects.filter(pk=desktop_id).first()
    if desktop is None or not can_act_on_desktop(actor, desktop):
        raise NotFoundError("No such desktop.")
    return desktop
