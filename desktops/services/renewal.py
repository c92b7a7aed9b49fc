"""Back to the template: a desktop's reset to a fresh overlay, putting an earlier disk
back, and volatile desktops that start over each time they stop.

A reset is O(1): a new qcow2 overlay on the template's disk, whatever the desktop held.
The disk it had goes to the recycle bin (`EarlierDisk`), so a reset by mistake can be put
back until the retention ends; a volatile desktop's disk goes at once (that is what
volatile means: nothing a student does is kept). The guest must be off: the request asks
for it (stopped or failed) and the task asks libvirt before touching any disk.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from django.db import transaction
from django.utils import timezone

from accounts.models import User
from accounts.permissions import can_manage_course
from desktops import task_calls
from desktops.choices import DesktopStatus
from desktops.models import Desktop, EarlierDisk
from desktops.services.lifecycle import desktop_shutdown
from desktops.services.transitions import (
    check_can_act,
    desktop_fail,
    desktop_transition,
    undo_transition,
)
from hypervisors.choices import DiskStatus
from hypervisors.drivers import libvirt_driver
from hypervisors.models import Disk
from hypervisors.services.disks import disk_create_overlay, disk_remove
from isard.core.errors import ApplicationError, ConflictError, NotFoundError, PermissionDeniedError
from isard.core.tasks import send_after_commit

logger = logging.getLogger(__name__)

S = DesktopStatus

#: The statuses a reset starts from: the guest is off (or its start failed).
RESETTABLE = frozenset({S.STOPPED, S.FAILED})


def may_reset(actor: User, desktop: Desktop) -> bool:
    """Whether the person may put this desktop (which they may act on) back to its template.

    Teachers, managers and administrators may, for any desktop they act on; a student for
    their own desktop when it belongs to no course (they made it themselves) or its course
    allows it (`Course.students_may_reset`).
    """
    if actor.is_admin or actor.is_teacher or desktop.owner_id != actor.pk:
        return True
    course = desktop.course
    return course is None or course.students_may_reset or can_manage_course(actor, course)


def _check_request(actor: User, desktop: Desktop) -> DesktopStatus:
    check_can_act(actor, desktop)
    if not may_reset(actor, desktop):
        raise PermissionDeniedError(
            f"Your teacher has not allowed resetting the desktops of “{desktop.course}”."
        )
    if desktop.status not in RESETTABLE:
        raise ConflictError(
            f"Shut down “{desktop.name}” first: it is "
            f"{DesktopStatus(desktop.status).label.lower()}.",
            extra={"status": desktop.status},
        )
    return DesktopStatus(desktop.status)


def desktop_reset_to_template(*, actor: User, desktop: Desktop) -> Desktop:
    """Ask for a fresh disk on the desktop's template; the earlier one goes to the bin."""
    previous = _check_request(actor, desktop)
    if desktop.template_id is None:
        raise ConflictError(
            f"“{desktop.name}” was installed from media: it has no template to go back to."
        )
    with transaction.atomic():
        desktop_transition(desktop=desktop, to=S.RESETTING, actor=actor)
        send_after_commit(
            task_calls.renew_desktop(desktop_id=desktop.pk, hypervisor=desktop.hypervisor),
            undo=undo_transition(desktop, previous),
        )
    return desktop


def desktop_put_back(*, actor: User, desktop: Desktop, earlier_id: int | None = None) -> Desktop:
    """Put an earlier disk back (the newest without `earlier_id`); the disk the desktop
    has now goes to the bin instead."""
    previous = _check_request(actor, desktop)
    chosen = EarlierDisk.objects.filter(desktop=desktop)
    if earlier_id is not None:
        chosen = chosen.filter(pk=earlier_id)
    earlier = chosen.order_by("-put_aside_at", "-pk").first()
    if earlier is None:
        raise NotFoundError("No such earlier disk of this desktop.")
    with transaction.atomic():
        desktop_transition(desktop=desktop, to=S.RESETTING, actor=actor)
        send_after_commit(
            task_calls.renew_desktop(
                desktop_id=desktop.pk, hypervisor=desktop.hypervisor, put_back=earlier.pk
            ),
            undo=undo_transition(desktop, previous),
        )
    return desktop


def _nothing_changed(desktop: Desktop, why: str) -> Desktop:
    try:
        return desktop_transition(
            desktop=desktop, to=S.STOPPED, reason=f"{why} Nothing was changed."
        )
    except ConflictError:
        desktop.refresh_from_db()
        return desktop


def _guest_is_off(desktop: Desktop) -> str | None:
    """Why the disk must not be swapped now (the guest runs, its host is silent), or None."""
    host = desktop.hypervisor
    if host is None:
        return None
    try:
        state = libvirt_driver.domain_state(host.uri, desktop.domain_name)
    except libvirt_driver.DriverError as error:
        return f"Could not ask {host.name} whether the guest is off: {error}."
    if state in (libvirt_driver.DomainState.SHUTOFF, libvirt_driver.DomainState.MISSING):
        return None
    return f"The guest is still {state.value} on {host.name}; force it off first."


def desktop_renew(*, desktop_id: int, put_back: int | None = None) -> Desktop:
    """Swap a RESETTING desktop's disk (run by a task on its host's worker).

    The new disk is made before anything is recorded; the swap itself is one transaction
    (the old disk to the bin, or away for a volatile desktop, the new one in), so a worker
    dying half-way leaves the desktop on its old disk, and the recovery fails it with a
    reason (`desktops_recover_stuck`).
    """
    desktop = Desktop.objects.select_related(
        "disk", "template__disk", "hypervisor", "pool", "course"
    ).get(pk=desktop_id)
    if desktop.status != S.RESETTING:
        return desktop
    refusal = _guest_is_off(desktop)
    if refusal is not None:
        return desktop_fail(desktop, f"Could not go back to the template: {refusal}")
    earlier: EarlierDisk | None = None
    if put_back is not None:
        earlier = EarlierDisk.objects.select_related("disk").filter(pk=put_back).first()
        if earlier is None or earlier.desktop_id != desktop.pk:
            return _nothing_changed(desktop, "That earlier disk is no longer in the recycle bin.")
        new_disk = earlier.disk
    else:
        template = desktop.template
        if template is None or template.disk is None:
            return _nothing_changed(desktop, "The desktop has no template to go back to.")
        try:
            new_disk = disk_create_overlay(parent=template.disk)
        except ApplicationError as error:
            return _nothing_changed(desktop, f"Could not go back to the template: {error.message}")
    old = desktop.disk
    discard = desktop.volatile and earlier is None
    fields: dict[str, Any] = {"disk": new_disk}
    if discard and desktop.pool is not None and desktop.pool_taken_at is not None:
        # A volatile pool's desktop goes back to the pool for the next student.
        fields.update(owner=desktop.pool.owner, pool_taken_at=None)
    if earlier is not None:
        reason = f"The disk of {earlier.put_aside_at:%Y-%m-%d %H:%M} UTC is back."
    elif discard:
        reason = "Back to the template (volatile: nothing was kept)."
    else:
        reason = "Back to the template; the earlier disk is in the recycle bin."
    try:
        with transaction.atomic():
            if earlier is not None:
                earlier.delete()
                Disk.objects.filter(pk=new_disk.pk).update(status=DiskStatus.READY)
            if old is not None and not discard:
                Disk.objects.filter(pk=old.pk).update(status=DiskStatus.RECYCLED)
                EarlierDisk.objects.create(desktop=desktop, disk=old, put_aside_at=timezone.now())
            desktop = desktop_transition(desktop=desktop, to=S.STOPPED, reason=reason, **fields)
    except ConflictError:
        if earlier is None:
            disk_remove(new_disk)
        desktop.refresh_from_db()
        return desktop
    if discard and old is not None:
        disk_remove(old)
    if desktop.pool_id is not None and "pool_taken_at" in fields:
        # The beat refills it anyway within 30 s: a broker hiccup here is only logged.
        send_after_commit(task_calls.refill_pool(pool_id=desktop.pool_id), quiet=True)
    return desktop


def desktops_renew_volatile(*, desktop_ids: Sequence[int]) -> int:
    """Volatile desktops that stopped after running start over (central worker).

    Each goes to RESETTING with a conditional update: one started again meanwhile is
    left alone (it starts over when it stops next).
    """
    renewed = 0
    for desktop in Desktop.objects.filter(pk__in=list(desktop_ids), volatile=True).select_related(
        "hypervisor"
    ):
        if desktop.status != S.STOPPED or desktop.template_id is None:
            continue
        try:
            with transaction.atomic():
                desktop_transition(
                    desktop=desktop, to=S.RESETTING, reason="Volatile: back to the template."
                )
                send_after_commit(
                    task_calls.renew_desktop(desktop_id=desktop.pk, hypervisor=desktop.hypervisor),
                    undo=undo_transition(desktop, S.STOPPED),
                )
            renewed += 1
        except ConflictError:
            continue
    return renewed


def desktops_shut_down_on_sign_out(*, user: User) -> int:
    """The person signed out: their running volatile desktops shut down (and start over)."""
    stopped = 0
    for desktop in Desktop.objects.filter(owner=user, volatile=True, status=S.STARTED):
        try:
            desktop_shutdown(actor=user, desktop=desktop)
            stopped += 1
        except ApplicationError as error:
            logger.warning("desktop %s not shut down at sign-out: %s", desktop.pk, error.message)
    return stopped
