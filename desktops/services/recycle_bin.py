"""Deleting desktops: the recycle bin, restoring from it, and purging it."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import ProtectedError
from django.utils import timezone

from accounts.models import User
from desktops import task_calls
from desktops.choices import DesktopStatus
from desktops.models import Desktop, EarlierDisk
from desktops.reports.rollup import usage_keep_purged
from desktops.services.transitions import (
    check_can_act,
    desktop_fail,
    desktop_transition,
    undo_transition,
)
from hypervisors.choices import DiskStatus
from hypervisors.drivers import libvirt_driver
from hypervisors.models import Disk
from isard.core.errors import (
    ConflictError,
)
from isard.core.tasks import send_after_commit

logger = logging.getLogger(__name__)


S = DesktopStatus


def desktop_delete(*, actor: User, desktop: Desktop) -> Desktop:
    """Move the desktop to the recycle bin: the domain goes, the disk is kept."""
    check_can_act(actor, desktop)
    if desktop.status in (S.STARTED, S.SHUTTING_DOWN, S.STARTING, S.STOPPING):
        raise ConflictError(f"Stop the desktop “{desktop.name}” before deleting it.")
    previous = DesktopStatus(desktop.status)
    with transaction.atomic():
        desktop_transition(desktop=desktop, to=S.DELETING, actor=actor)
        send_after_commit(
            task_calls.delete_desktop(desktop_id=desktop.pk, hypervisor=desktop.hypervisor),
            undo=undo_transition(desktop, previous),
        )
    return desktop


def desktop_recycle(*, desktop_id: int) -> Desktop:
    desktop = Desktop.objects.select_related("hypervisor", "disk").get(pk=desktop_id)
    if desktop.status != S.DELETING:
        return desktop
    if desktop.hypervisor is not None:
        try:
            libvirt_driver.undefine_domain(desktop.hypervisor.uri, desktop.domain_name)
        except libvirt_driver.DriverError as error:
            return desktop_fail(
                desktop, f"Could not remove the desktop from {desktop.hypervisor}: {error}"
            )
    with transaction.atomic():
        if desktop.disk is not None:
            Disk.objects.filter(pk=desktop.disk.pk).update(status=DiskStatus.RECYCLED)
        return desktop_transition(
            desktop=desktop, to=S.DELETED, deleted_at=timezone.now(), hypervisor=None
        )


def desktop_restore(*, actor: User, desktop: Desktop) -> Desktop:
    """Take the desktop out of the recycle bin; its disk is exactly as it was."""
    check_can_act(actor, desktop)
    if desktop.status != S.DELETED:
        raise ConflictError(f"The desktop “{desktop.name}” is not in the recycle bin.")
    with transaction.atomic():
        if desktop.disk_id is not None:
            Disk.objects.filter(pk=desktop.disk_id).update(status=DiskStatus.READY)
        return desktop_transition(desktop=desktop, to=S.STOPPED, actor=actor, deleted_at=None)


def desktop_purge(*, desktop: Desktop) -> None:
    """Remove a recycled desktop for good: its disk file and its rows."""
    if desktop.status != S.DELETED:
        raise ConflictError(f"The desktop “{desktop.name}” is not in the recycle bin.")
    disk = desktop.disk
    earlier = list(EarlierDisk.objects.filter(desktop=desktop).select_related("disk"))
    disks = [entry.disk for entry in earlier] + ([disk] if disk is not None else [])
    with transaction.atomic():
        # Its hours outlive it: the usage rows keep them once its events are gone.
        usage_keep_purged(desktop=desktop)
        EarlierDisk.objects.filter(pk__in=[entry.pk for entry in earlier]).delete()
        desktop.delete()
        try:
            Disk.objects.filter(pk__in=[d.pk for d in disks]).delete()
        except ProtectedError as error:
            raise ConflictError("Its disk is still used by another disk.") from error
    for gone in disks:
        Path(gone.path).unlink(missing_ok=True)


def earlier_disks_purge_expired(*, now: Any = None) -> int:
    """Remove the disks resets put aside longer than the retention ago."""
    now = now or timezone.now()
    limit = now - timedelta(days=settings.ISARD_RECYCLE_RETENTION_DAYS)
    purged = 0
    for entry in EarlierDisk.objects.filter(put_aside_at__lt=limit).select_related("disk"):
        try:
            with transaction.atomic():
                entry.delete()
                entry.disk.delete()
        except ProtectedError:
            logger.warning("earlier disk %s has disks on it; kept", entry.disk.path)
            continue
        Path(entry.disk.path).unlink(missing_ok=True)
        purged += 1
    return purged


def desktops_purge_expired(*, now: Any = None) -> int:
    """Purge every desktop that has waited in the recycle bin longer than the retention."""
    now = now or timezone.now()
    limit = now - timedelta(days=settings.ISARD_RECYCLE_RETENTION_DAYS)
    purged = 0
    for desktop in Desktop.objects.filter(status=S.DELETED, deleted_at__lt=limit).select_related(
        "disk"
    ):
        try:
            desktop_purge(desktop=desktop)
            purged += 1
        except ConflictError as error:
            logger.warning("cannot purge desktop %s: %s", desktop.pk, error.message)
    return purged + earlier_disks_purge_expired(now=now)
