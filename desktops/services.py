"""Every write to a desktop, as typed functions.

Pattern: a user-facing service (`desktop_start`) checks permissions and state, moves the
desktop to a busy status with one conditional update, and schedules a Celery task after
commit. The task calls the matching engine service (`desktop_boot`), which does the
libvirt/qemu-img I/O outside any transaction and records the outcome with another
transition. Failures always end in FAILED with the reason a person can read.
"""

from __future__ import annotations

import logging
import secrets
import threading
import uuid as uuid_module
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import ProtectedError
from django.utils import timezone
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from accounts.models import Course, User
from accounts.permissions import can_act_on_desktop, can_manage_course
from accounts.quotas import QuotaChange, quota_check, quota_check_many, start_change
from desktops.choices import TRANSITIONS, DesktopStatus
from desktops.models import Desktop, DesktopEvent
from desktops.viewer.services import graphics_listen_address
from hypervisors import qemu_img
from hypervisors.choices import DiskStatus, PoolPurpose
from hypervisors.drivers import libvirt_driver
from hypervisors.drivers.domain_xml import DiskSpec, DomainSpec, build_domain_xml, shape_key
from hypervisors.models import Disk, Hypervisor, StoragePool
from hypervisors.services import (
    disk_create_empty,
    disk_path,
    disk_refresh_actual_size,
    hypervisor_hand_off,
    hypervisor_place,
    hypervisors_hand_off_many,
    hypervisors_place_many,
    pool_for,
)
from isard.core.broadcast import group_send_many
from isard.core.errors import (
    ApplicationError,
    ConflictError,
    InfrastructureError,
    NoCapacityError,
    NotFoundError,
    PermissionDeniedError,
    TaskQueueUnavailableError,
)
from templates_app.choices import MediaStatus, TemplateStatus
from templates_app.models import HardwareProfile, Media, Template
from templates_app.selectors import template_is_visible_to

logger = logging.getLogger(__name__)

S = DesktopStatus


# --- the one place a status changes ------------------------------------------------------


def desktop_transition(
    *,
    desktop: Desktop,
    to: DesktopStatus,
    reason: str = "",
    actor: User | None = None,
    **fields: Any,
) -> Desktop:
    """Move `desktop` from its current status (as loaded) to `to`, or raise ConflictError."""
    _changed, conflicts = desktops_transition(
        changes=[(desktop, fields)], to=to, reason=reason, actor=actor
    )
    if conflicts:
        raise conflicts[0]
    return desktop


def desktops_transition(
    *,
    changes: Sequence[tuple[Desktop, dict[str, Any]]],
    to: DesktopStatus,
    reason: str = "",
    actor: User | None = None,
) -> tuple[list[Desktop], list[ConflictError]]:
    """The one place a status changes; for one desktop or a whole class in one transaction.

    For each (desktop, extra fields): checks the declared table, then updates with
    `WHERE status = <as loaded>`, so a desktop another worker changed meanwhile is left
    alone and reported as a conflict. Writes the audit rows and, after commit, sends each
    owner's websocket the new status. Returns the desktops changed and the conflicts.
    """
    to = DesktopStatus(to)  # a plain string from a caller is fine; a typo raises ValueError
    now = timezone.now()
    changed: list[Desktop] = []
    conflicts: list[ConflictError] = []
    events: list[DesktopEvent] = []
    payloads: list[tuple[int, dict[str, Any]]] = []
    with transaction.atomic():
        for desktop, fields in changes:
            current = DesktopStatus(desktop.status)
            if to not in TRANSITIONS[current]:
                conflicts.append(
                    ConflictError(
                        f"The desktop “{desktop.name}” is {current.label.lower()}; "
                        f"it cannot become {to.label.lower()}.",
                        extra={"status": current.value, "requested": to.value},
                    )
                )
                continue
            updated = Desktop.objects.filter(pk=desktop.pk, status=current).update(
                status=to, status_reason=reason, status_changed_at=now, **fields
            )
            if updated == 0:
                fresh = Desktop.objects.filter(pk=desktop.pk).values_list("status", flat=True)
                conflicts.append(
                    ConflictError(
                        f"The desktop “{desktop.name}” changed meanwhile; try again.",
                        extra={"status": fresh.first(), "expected": current.value},
                    )
                )
                continue
            events.append(
                DesktopEvent(
                    desktop=desktop, from_status=current, to_status=to, reason=reason, actor=actor
                )
            )
            payloads.append(
                (
                    desktop.owner_id,
                    desktop_status_payload(desktop, status=to, reason=reason, changed_at=now),
                )
            )
            changed.append(desktop)
            desktop.status, desktop.status_reason, desktop.status_changed_at = to, reason, now
            for name, value in fields.items():
                setattr(desktop, name, value)
        DesktopEvent.objects.bulk_create(events)
        if payloads:
            transaction.on_commit(partial(broadcast_status_payloads, payloads))
    return changed, conflicts


def broadcast_status_payloads(payloads: Sequence[tuple[int, dict[str, Any]]]) -> None:
    """Send desktops' statuses (as committed) to their owners' websocket groups.

    A desktop of a course goes to the course's group too, where its teachers' pages
    listen: a class of thirty starting shows up live on the teacher's screen.
    """
    messages: list[tuple[str, dict[str, Any]]] = []
    for owner_id, payload in payloads:
        event = {"type": "desktop.status", "desktop": payload}
        messages.append((owner_group(owner_id), event))
        if payload.get("course"):
            messages.append((course_group(payload["course"]), event))
    group_send_many(messages)


def broadcast_desktop_status(desktop_id: int) -> None:
    """Send the desktop's current status, read from the database, to its owner."""
    desktop = Desktop.objects.filter(pk=desktop_id).first()
    if desktop is not None:
        broadcast_status_payloads([(desktop.owner_id, desktop_status_payload(desktop))])


def owner_group(user_id: int) -> str:
    return f"desktops.user.{user_id}"


def course_group(course_id: int) -> str:
    return f"desktops.course.{course_id}"


def desktop_status_payload(
    desktop: Desktop,
    *,
    status: DesktopStatus | None = None,
    reason: str | None = None,
    changed_at: datetime | None = None,
) -> dict[str, Any]:
    """What the websocket sends about a desktop (overrides: the values being written)."""
    status = status or DesktopStatus(desktop.status)
    return {
        "id": desktop.pk,
        "uuid": str(desktop.uuid),
        "owner": desktop.owner_id,
        "course": desktop.course_id,
        "name": desktop.name,
        "status": status.value,
        "status_label": status.label,
        "status_reason": desktop.status_reason if reason is None else reason,
        "status_changed_at": (changed_at or desktop.status_changed_at).isoformat(),
    }


def _record_event(desktop: Desktop, reason: str, actor: User | None = None) -> None:
    DesktopEvent.objects.create(
        desktop=desktop,
        from_status=desktop.status,
        to_status=desktop.status,
        reason=reason,
        actor=actor,
    )


def _fail(desktop: Desktop, reason: str) -> Desktop:
    """Record a failure; if someone else moved the desktop meanwhile, their status stands."""
    desktop.refresh_from_db()
    if S.FAILED not in TRANSITIONS[DesktopStatus(desktop.status)]:
        logger.warning("desktop %s: %s (left %s)", desktop.pk, reason, desktop.status)
        return desktop
    try:
        return desktop_transition(desktop=desktop, to=S.FAILED, reason=reason)
    except ConflictError:
        desktop.refresh_from_db()
        return desktop


def _check_can_act(actor: User, desktop: Desktop) -> None:
    if not can_act_on_desktop(actor, desktop):
        raise PermissionDeniedError("This desktop is not yours.")


# --- sending tasks, and what happens when the task queue is unreachable ------------------
#
# A task is sent after the transaction that moved the desktop to a busy status commits (so
# the worker never sees a status that is not there yet). If Redis cannot take it, the
# request must not hang and the desktop must not stay busy for ever: the broker's sockets
# time out (settings: CELERY_BROKER_TRANSPORT_OPTIONS), the sender's `undo` puts the
# desktop back, and the person gets TaskQueueUnavailableError (503). What `undo` does:
# - a new desktop (creating, no disk, no domain) is removed again: nothing existed yet;
# - any other desktop goes back to the status it had when the table allows it (a start
#   back to stopped or failed, a shutdown back to started), else it fails with the reason
#   (a force-off or a delete); the reconciliation corrects "failed" to "started" for a
#   guest that still runs, once the queue is back.

#: Errors that mean the broker did not take the message (kombu re-raises Redis's own).
_BROKER_ERRORS: tuple[type[BaseException], ...] = (KombuOperationalError, RedisError, OSError)


def task_queue_unreachable_message(error: BaseException) -> str:
    return f"The task queue is unreachable ({error}); nothing was done, try again in a moment."


def send_task(
    task_name: str,
    args: list[Any],
    options: dict[str, Any],
    on_failure: Callable[[str], None] | None = None,
) -> None:
    """Send a Celery task now; if the broker cannot take it, undo and raise a 503 error.

    The result is ignored: the services record every outcome in the database, and
    subscribing to a result in Redis is what made a send wait ~20 s on a dead broker.
    """
    from isard.celery import app

    try:
        app.send_task(task_name, args=args, ignore_result=True, **options)
    except _BROKER_ERRORS as error:
        message = task_queue_unreachable_message(error)
        logger.error("could not send %s%s: %s", task_name, args, error)
        if on_failure is not None:
            on_failure(message)
        raise TaskQueueUnavailableError(message, extra={"task": task_name}) from error


def _schedule(
    task_name: str, *args: Any, undo: Callable[[str], None] | None = None, **options: Any
) -> None:
    """Send a Celery task once the current transaction has committed.

    A `partial` of `send_task` (not a lambda) so tests can see what was scheduled. `undo`
    is called with the reason if the task could not be sent (see above).
    """
    transaction.on_commit(partial(send_task, task_name, list(args), options, on_failure=undo))


def _undo_creation(desktop_ids: Sequence[int]) -> Callable[[str], None]:
    """An `undo` for new desktops: remove those still creating with nothing made yet."""

    def undo(reason: str) -> None:
        removed, _ = Desktop.objects.filter(
            pk__in=list(desktop_ids), status=S.CREATING, disk__isnull=True
        ).delete()
        logger.warning("removed %s new desktops: %s", removed, reason)

    return undo


def _undo_transition(desktop: Desktop, previous: DesktopStatus) -> Callable[[str], None]:
    """An `undo` for a busy status: back to `previous` if the table allows, else failed."""
    busy = DesktopStatus(desktop.status)

    def undo(reason: str) -> None:
        current = Desktop.objects.filter(pk=desktop.pk).first()
        if current is None or current.status != busy:
            return  # someone else moved it meanwhile
        target = previous if previous in TRANSITIONS[busy] else S.FAILED
        try:
            desktop_transition(desktop=current, to=target, reason=reason)
        except ConflictError:
            pass
        desktop.refresh_from_db()

    return undo


# --- placement: the fleet's balancer ---------------------------------------------------


def choose_hypervisor(
    *,
    memory_mib: int,
    vcpus: int = 1,
    desktop: Desktop | None = None,
    storage_pool: StoragePool | None = None,
    charge: bool = True,
) -> Hypervisor:
    """Where a desktop runs: the fleet's policy and constraints, starts in flight counted.

    See `hypervisors.services.hypervisor_place`; raises NoCapacityError with the reason.
    """
    return hypervisor_place(
        memory_mib=memory_mib,
        vcpus=vcpus,
        desktop=desktop,
        storage_pool=storage_pool,
        charge=charge,
    )


def _host_to_define_on(
    desktop: Desktop, pool: StoragePool, refusal: NoCapacityError | None = None
) -> Hypervisor:
    """A host to define (not start) a desktop on: where it would start, else any that may.

    A definition takes no memory, so a fleet busy running this hour's class must not
    refuse to create next hour's desktops: when no host has room for the desktop now,
    the same balancer is asked for a host with no size at all, keeping every hard
    constraint (enabled, online, storage pool, tags, forced host). The start places the
    desktop again, with its real size.
    """
    if refusal is None:
        try:
            return choose_hypervisor(
                memory_mib=desktop.hardware.memory_mib,
                vcpus=desktop.hardware.vcpus,
                desktop=desktop,
                storage_pool=pool,
                charge=False,
            )
        except NoCapacityError:
            pass
    return choose_hypervisor(
        memory_mib=0, vcpus=0, desktop=desktop, storage_pool=pool, charge=False
    )


# --- domain description -------------------------------------------------------------------


def serial_log_path(desktop: Desktop) -> Path:
    directory = Path(settings.ISARD_STORAGE_ROOT) / "logs"
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{desktop.domain_name}.serial.log"


def desktop_domain_spec(desktop: Desktop, hypervisor: Hypervisor) -> DomainSpec:
    hardware = desktop.hardware
    if desktop.disk is None:
        raise ConflictError(f"The desktop “{desktop.name}” has no disk yet.")
    disks = [DiskSpec(path=desktop.disk.path, format=desktop.disk.format, bus=hardware.disk_bus)]
    cdroms = [
        DiskSpec(path=media.path, format="raw", bus=hardware.disk_bus, device="cdrom")
        for media in desktop.media.all()
    ]
    disks += cdroms
    boot_order = tuple(hardware.boot_order)
    if cdroms and "cdrom" not in boot_order:
        boot_order = ("cdrom", *boot_order)  # an install disc in the drive is there to boot
    return DomainSpec(
        name=desktop.domain_name,
        uuid=str(desktop.uuid),
        title=desktop.name,
        domain_type=hypervisor.accelerator or "qemu",
        vcpus=hardware.vcpus,
        memory_mib=hardware.memory_mib,
        disks=tuple(disks),
        boot_order=boot_order,
        firmware=hardware.firmware,
        nic_model=hardware.nic_model,
        networks=tuple(hardware.networks),
        video_model=hardware.video_model,
        spice=hardware.graphics_spice,
        vnc=hardware.graphics_vnc,
        graphics_password=desktop.graphics_password,
        graphics_listen=graphics_listen_address(hypervisor),
        usb_redirect_devices=hardware.usb_redirect_devices if hardware.graphics_spice else 0,
        guest_agent=libvirt_driver.guest_agent_channel_fits(hypervisor.uri),
        serial_log_path=str(serial_log_path(desktop)),
        metadata={"desktop": str(desktop.uuid), "owner": desktop.owner.get_username()},
    )


def _define(desktop: Desktop, hypervisor: Hypervisor) -> None:
    spec = desktop_domain_spec(desktop, hypervisor)
    libvirt_driver.define_domain(hypervisor.uri, build_domain_xml(spec), shape=shape_key(spec))


def _new_graphics_password() -> str:
    # VNC uses at most 8 characters; 8 URL-safe characters are 48 random bits.
    return secrets.token_urlsafe(6)


# --- create -------------------------------------------------------------------------------


def desktop_create(
    *,
    actor: User,
    template: Template,
    name: str,
    owner: User | None = None,
    course: Course | None = None,
    description: str = "",
) -> Desktop:
    """Create a desktop from a template; the disk and domain are made by a task."""
    owner = owner or actor
    if owner.pk != actor.pk and not actor.is_admin:
        raise PermissionDeniedError("You may only create desktops for yourself.")
    name = name.strip()
    if not name:
        raise ApplicationError("A desktop needs a name.")
    if len(name) > 200:
        raise ApplicationError("A desktop name is at most 200 characters.")
    if template.status != TemplateStatus.READY or template.disk is None:
        raise ConflictError(f"The template “{template.name}” is not ready.")
    shared = template.shared_with_everyone or template.owner_id == owner.pk or owner.is_admin
    if not shared and not template_is_visible_to(template, owner):
        raise PermissionDeniedError(f"The template “{template.name}” is not shared with you.")
    with transaction.atomic():
        quota_check(owner=owner, actor=actor, course=course, change=QuotaChange(desktops=1))
        desktop = Desktop.objects.create(
            name=name,
            description=description,
            owner=owner,
            course=course,
            template=template,
            hardware=template.hardware,
            status=S.CREATING,
        )
        DesktopEvent.objects.create(desktop=desktop, to_status=S.CREATING, actor=actor)
        _schedule("desktops.tasks.provision_desktop", desktop.pk, undo=_undo_creation([desktop.pk]))
    return desktop


def desktop_create_from_media(
    *,
    actor: User,
    media: Media,
    hardware: HardwareProfile,
    name: str,
    course: Course | None = None,
) -> Desktop:
    """A desktop with an empty disk and an install ISO in its CD-ROM drive, booting from it.

    This is how a teacher starts a template from scratch: install from the ISO, then make
    a template of the desktop.
    """
    if not actor.is_teacher:
        raise PermissionDeniedError("Only teachers can install desktops from media.")
    if media.owner_id not in (None, actor.pk) and not actor.is_admin:
        raise PermissionDeniedError(f"The media “{media.name}” is not yours.")
    if media.status != MediaStatus.READY:
        raise ConflictError(f"The media “{media.name}” is not ready yet.")
    name = name.strip()
    if not name or len(name) > 200:
        raise ApplicationError("A desktop needs a name of at most 200 characters.")
    with transaction.atomic():
        quota_check(owner=actor, actor=actor, course=course, change=QuotaChange(desktops=1))
        desktop = Desktop.objects.create(
            name=name, owner=actor, course=course, hardware=hardware, status=S.CREATING
        )
        desktop.media.add(media)
        DesktopEvent.objects.create(desktop=desktop, to_status=S.CREATING, actor=actor)
        _schedule("desktops.tasks.provision_desktop", desktop.pk, undo=_undo_creation([desktop.pk]))
    return desktop


def desktop_provision(*, desktop_id: int, hypervisor_id: int | None = None) -> Desktop:
    """Make the disk and define the domain; a bad profile fails here, not in front of a class.

    The disk is an overlay on the template's, or, for a desktop installed from media, an
    empty disk of the profile's size. With `hypervisor_id` the desktop was already placed
    there by a first call, which handed the work to that host's own worker.
    """
    desktop = Desktop.objects.select_related("template__disk", "hardware", "owner").get(
        pk=desktop_id
    )
    if desktop.status != S.CREATING:
        return desktop  # already done (the task ran twice)
    template = desktop.template
    from_media = template is None and desktop.media.exists()
    if not from_media and (template is None or template.disk is None):
        return _fail(desktop, "The desktop has no template disk to start from.")
    disk: Disk | None = None
    hypervisor: Hypervisor | None = None
    try:
        if hypervisor_id is not None:
            hypervisor = Hypervisor.objects.filter(pk=hypervisor_id).first()
            if hypervisor is None:
                raise ConflictError("The hypervisor it was placed on is no longer registered.")
        else:
            hypervisor = _host_to_define_on(desktop, pool_for(PoolPurpose.DESKTOPS))
            if hypervisor_hand_off(
                "desktops.tasks.provision_desktop", desktop.pk, hypervisor=hypervisor
            ):
                return desktop
        # The disk is recorded and linked to the desktop, with its host, before its file
        # is made: if this worker dies mid-way, the recovery finds what was made and
        # removes it (`desktops_recover_stuck`).
        if from_media:
            disk = disk_create_empty(size_bytes=desktop.hardware.disk_size_gib * 1024**3)
            Desktop.objects.filter(pk=desktop.pk).update(disk=disk, hypervisor=hypervisor)
        else:
            assert template is not None and template.disk is not None
            disk = _overlay_recorded_first(desktop, template.disk, hypervisor)
        desktop.disk = disk
        _define(desktop, hypervisor)
    except (ApplicationError, libvirt_driver.DriverError) as error:
        disk = disk or Disk.objects.filter(desktops=desktop.pk).first()
        if hypervisor is not None:
            try:
                libvirt_driver.undefine_domain(hypervisor.uri, desktop.domain_name)
            except libvirt_driver.DriverError:
                pass
        if disk is not None:
            Desktop.objects.filter(pk=desktop.pk).update(disk=None, hypervisor=None)
            desktop.disk = None
            Path(disk.path).unlink(missing_ok=True)
            disk.delete()
        message = error.message if isinstance(error, ApplicationError) else str(error)
        return _fail(desktop, f"Could not create the desktop: {message}")
    return desktop_transition(desktop=desktop, to=S.STOPPED, disk=disk, hypervisor=hypervisor)


def _overlay_recorded_first(desktop: Desktop, parent: Disk, hypervisor: Hypervisor) -> Disk:
    """The desktop's overlay on `parent`: its row and link first, then the file."""
    pool = pool_for(PoolPurpose.DESKTOPS)
    path = disk_path(pool)
    disk = Disk.objects.create(
        pool=pool,
        path=str(path),
        format="qcow2",
        parent=parent,
        virtual_size_bytes=parent.virtual_size_bytes,
    )
    Desktop.objects.filter(pk=desktop.pk).update(disk=disk, hypervisor=hypervisor)
    try:
        qemu_img.create_overlay(path, Path(parent.path), backing_format=parent.format)
    except qemu_img.QemuImgError as error:
        raise InfrastructureError(f"could not create the disk: {error}") from error
    disk.actual_size_bytes = path.stat().st_blocks * 512
    disk.save(update_fields=["actual_size_bytes"])
    return disk


def desktops_create_bulk(
    *,
    actor: User,
    template: Template,
    owners: Sequence[User],
    name: str,
    course: Course | None = None,
) -> list[Desktop]:
    """Create one desktop from `template` for each owner: one transaction, one task.

    This is how a teacher gives a whole class its desktops: the rows appear at once (as
    "creating"), and `desktops_provision_bulk` makes the disks and domains concurrently.
    """
    if not actor.is_teacher:
        raise PermissionDeniedError("Only teachers can create desktops for others.")
    name = name.strip()
    if not name or len(name) > 200:
        raise ApplicationError("A desktop needs a name of at most 200 characters.")
    if template.status != TemplateStatus.READY or template.disk is None:
        raise ConflictError(f"The template “{template.name}” is not ready.")
    if not template_is_visible_to(template, actor):
        raise PermissionDeniedError(f"The template “{template.name}” is not shared with you.")
    if not actor.is_admin:
        if course is None or not can_manage_course(actor, course):
            raise PermissionDeniedError("You can only create desktops for a course you teach.")
        assert course is not None
        members = set(course.memberships.values_list("user_id", flat=True))
        strangers = [owner.get_username() for owner in owners if owner.pk not in members]
        if strangers:
            raise PermissionDeniedError(
                f"Not in the course “{course.name}”: {', '.join(strangers)}.",
                extra={"users": strangers},
            )
    with transaction.atomic():
        quota_check_many(owners=owners, actor=actor, course=course, change=QuotaChange(desktops=1))
        desktops = Desktop.objects.bulk_create(
            [
                Desktop(
                    name=name,
                    owner=owner,
                    course=course,
                    template=template,
                    hardware=template.hardware,
                    status=S.CREATING,
                )
                for owner in owners
            ]
        )
        DesktopEvent.objects.bulk_create(
            [DesktopEvent(desktop=d, to_status=S.CREATING, actor=actor) for d in desktops]
        )
        ids = [d.pk for d in desktops]
        _schedule("desktops.tasks.provision_desktops", ids, undo=_undo_creation(ids))
    return desktops


def _provision_io(
    uri: str, overlay: Path, backing: Path, backing_format: str, xml: str, shape: str
) -> str | None:
    """Make one overlay and define one domain; the error message, or None. No database."""
    try:
        qemu_img.create_overlay(overlay, backing, backing_format=backing_format)
    except qemu_img.QemuImgError as error:
        overlay.unlink(missing_ok=True)
        return f"Could not create the desktop: could not create the disk: {error}"
    try:
        libvirt_driver.define_domain(uri, xml, shape=shape)
    except libvirt_driver.DriverError as error:
        overlay.unlink(missing_ok=True)
        return f"Could not create the desktop: {error}"
    return None


def desktops_provision_bulk(
    *, desktop_ids: Sequence[int], placed_on: Sequence[Sequence[int]] | None = None
) -> list[Desktop]:
    """Make the overlays and domains of many new desktops, several at a time.

    Everything that needs the database happens in this thread, before and after; the
    worker threads only run qemu-img and libvirt, which are I/O and other processes.
    Desktops placed on hosts with a worker of their own are handed to those workers, with
    their placement as `placed_on` (pairs of desktop id, host id).
    """
    desktops = list(
        Desktop.objects.filter(pk__in=desktop_ids, status=S.CREATING).select_related(
            "template__disk", "hardware", "owner"
        )
    )
    if not desktops:
        return []
    pool = pool_for(PoolPurpose.DESKTOPS)
    failures: dict[int, str] = {}
    jobs: list[tuple[int, str, Path, Path, str, str, str]] = []
    # Each desktop is placed in turn, seeing the ones before it: a class spreads over the
    # fleet (or packs, per its course's policy) instead of landing on one host.
    placements: dict[int, Hypervisor | NoCapacityError]
    if placed_on is None:
        placements = hypervisors_place_many(desktops=desktops, storage_pool=pool)
        handed_off = hypervisors_hand_off_many("desktops.tasks.provision_desktops", placements)
        desktops = [desktop for desktop in desktops if desktop.pk not in handed_off]
    else:
        chosen = {int(desktop_id): int(host_id) for desktop_id, host_id in placed_on}
        by_id = Hypervisor.objects.in_bulk(set(chosen.values()))
        gone = NoCapacityError("The hypervisor it was placed on is no longer registered.")
        placements = {d.pk: by_id.get(chosen.get(d.pk, 0), gone) for d in desktops}
    hosts: dict[int, Hypervisor] = {}
    for desktop in desktops:
        placed = placements[desktop.pk]
        if isinstance(placed, NoCapacityError):
            try:
                placed = _host_to_define_on(desktop, pool, placed)
            except NoCapacityError as error:
                placed = error
        if isinstance(placed, NoCapacityError):
            failures[desktop.pk] = f"Could not create the desktop: {placed.message}"
            continue
        hypervisor = hosts[desktop.pk] = placed
        parent = desktop.template.disk if desktop.template else None
        if parent is None:
            failures[desktop.pk] = "The desktop has no template disk to start from."
            continue
        desktop.disk = Disk(
            pool=pool,
            path=str(disk_path(pool)),
            format="qcow2",
            parent=parent,
            virtual_size_bytes=parent.virtual_size_bytes,
        )
        spec = desktop_domain_spec(desktop, hypervisor)
        jobs.append(
            (
                desktop.pk,
                hypervisor.uri,
                Path(desktop.disk.path),
                Path(parent.path),
                parent.format,
                build_domain_xml(spec),
                shape_key(spec),
            )
        )
    made_ids = {job[0] for job in jobs}
    planned = [d for d in desktops if d.pk in made_ids]
    if planned:
        # Recorded and linked before any file is made: if this worker dies during the I/O,
        # the recovery finds each half-made disk and domain (`desktops_recover_stuck`).
        for desktop in planned:
            desktop.hypervisor = hosts[desktop.pk]
        with transaction.atomic():
            Disk.objects.bulk_create([d.disk for d in planned if d.disk is not None])
            Desktop.objects.bulk_update(planned, ["disk", "hypervisor"])
    if jobs:
        with ThreadPoolExecutor(max_workers=settings.ISARD_PROVISION_CONCURRENCY) as executor:
            outcomes = list(executor.map(lambda job: (job[0], _provision_io(*job[1:])), jobs))
        failures.update({desktop_id: message for desktop_id, message in outcomes if message})
    made = [d for d in planned if d.pk not in failures]
    for desktop in made:
        assert desktop.disk is not None
        desktop.disk.actual_size_bytes = Path(desktop.disk.path).stat().st_blocks * 512
    unmade = [d for d in planned if d.pk in failures]
    with transaction.atomic():
        if unmade:
            # Their files are gone already (`_provision_io`); their rows go too.
            Desktop.objects.filter(pk__in=[d.pk for d in unmade]).update(disk=None, hypervisor=None)
            Disk.objects.filter(pk__in=[d.disk.pk for d in unmade if d.disk is not None]).delete()
        made_disks = [d.disk for d in made if d.disk is not None]
        Disk.objects.bulk_update(made_disks, ["actual_size_bytes"])
        desktops_transition(
            changes=[(d, {"disk": d.disk, "hypervisor": hosts[d.pk]}) for d in made],
            to=S.STOPPED,
        )
        for desktop in desktops:
            if desktop.pk in failures:
                desktop.disk = desktop.hypervisor = None
                desktops_transition(
                    changes=[(desktop, {})], to=S.FAILED, reason=failures[desktop.pk]
                )
    return desktops


# --- start / stop -------------------------------------------------------------------------


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
    _check_can_act(actor, desktop)
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
                graphics_password=_new_graphics_password(),
            )
            _schedule(
                "desktops.tasks.boot_desktop",
                desktop.pk,
                undo=_undo_transition(desktop, previous),
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
        return _fail(desktop, "The desktop has no disk.")
    try:
        qemu_img.backing_chain(Path(desktop.disk.path))
    except qemu_img.QemuImgError as error:
        return _fail(desktop, f"The desktop's disk or its template is missing: {error}")
    if hypervisor_id is not None:
        placed_on = Hypervisor.objects.filter(pk=hypervisor_id).first()
        if placed_on is None:
            return _fail(desktop, "The hypervisor it was placed on is no longer registered.")
        hypervisor = placed_on
    else:
        try:
            hypervisor = choose_hypervisor(
                memory_mib=desktop.hardware.memory_mib,
                vcpus=desktop.hardware.vcpus,
                desktop=desktop,
            )
        except NoCapacityError as error:
            return _fail(desktop, error.message)
        if hypervisor_hand_off("desktops.tasks.boot_desktop", desktop.pk, hypervisor=hypervisor):
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
        _define(desktop, hypervisor)
        Desktop.objects.filter(pk=desktop.pk).update(hypervisor=hypervisor)
        libvirt_driver.start_domain(hypervisor.uri, desktop.domain_name)
    except libvirt_driver.DriverError as error:
        return _fail(desktop, f"Could not start on {hypervisor.name}: {error}")
    desktop.refresh_from_db()
    if desktop.status == S.STARTING:
        try:
            desktop_transition(desktop=desktop, to=S.STARTED, hypervisor=hypervisor)
        except ConflictError:
            desktop.refresh_from_db()  # the lifecycle listener was faster
    return desktop


def desktop_shutdown(*, actor: User, desktop: Desktop) -> Desktop:
    """Ask the guest to power off; it is forced off after the configured timeout."""
    _check_can_act(actor, desktop)
    previous = DesktopStatus(desktop.status)
    with transaction.atomic():
        desktop_transition(desktop=desktop, to=S.SHUTTING_DOWN, actor=actor)
        undo = _undo_transition(desktop, previous)
        _schedule("desktops.tasks.shutdown_desktop", desktop.pk, undo=undo)
        _schedule(
            "desktops.tasks.shutdown_timeout",
            desktop.pk,
            undo=undo,
            countdown=settings.ISARD_SHUTDOWN_TIMEOUT_SECONDS,
        )
    return desktop


def desktop_send_shutdown(*, desktop_id: int) -> Desktop:
    desktop = Desktop.objects.select_related("hypervisor").get(pk=desktop_id)
    if desktop.status != S.SHUTTING_DOWN or desktop.hypervisor is None:
        return desktop
    try:
        libvirt_driver.shutdown_domain(desktop.hypervisor.uri, desktop.domain_name)
    except libvirt_driver.DriverError as error:
        return _fail(desktop, f"Could not shut down: {error}")
    return desktop


def desktop_shutdown_timeout(*, desktop_id: int) -> Desktop:
    """The guest ignored the ACPI request for too long: force it off."""
    desktop = Desktop.objects.select_related("hypervisor").get(pk=desktop_id)
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
    return desktop_force_off(desktop_id=desktop.pk)


def desktop_stop(*, actor: User, desktop: Desktop) -> Desktop:
    """Force the desktop off at once (pulling the plug)."""
    _check_can_act(actor, desktop)
    previous = DesktopStatus(desktop.status)
    with transaction.atomic():
        desktop_transition(desktop=desktop, to=S.STOPPING, actor=actor)
        _schedule(
            "desktops.tasks.force_off_desktop",
            desktop.pk,
            undo=_undo_transition(desktop, previous),
        )
    return desktop


def desktop_force_off(*, desktop_id: int) -> Desktop:
    desktop = Desktop.objects.select_related("hypervisor").get(pk=desktop_id)
    if desktop.status != S.STOPPING:
        return desktop
    if desktop.hypervisor is not None:
        try:
            libvirt_driver.destroy_domain(desktop.hypervisor.uri, desktop.domain_name)
        except libvirt_driver.DriverError as error:
            return _fail(desktop, f"Could not force off: {error}")
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
    _check_can_act(actor, desktop)
    if desktop.status != S.STARTED or desktop.hypervisor is None:
        raise ConflictError(f"The desktop “{desktop.name}” is not running.")
    try:
        libvirt_driver.reset_domain(desktop.hypervisor.uri, desktop.domain_name)
    except libvirt_driver.DriverError as error:
        raise InfrastructureError(f"Could not reset: {error}") from error
    _record_event(desktop, "reset", actor)
    return desktop


# --- delete, recycle bin, restore, purge --------------------------------------------------


def desktop_delete(*, actor: User, desktop: Desktop) -> Desktop:
    """Move the desktop to the recycle bin: the domain goes, the disk is kept."""
    _check_can_act(actor, desktop)
    if desktop.status in (S.STARTED, S.SHUTTING_DOWN, S.STARTING, S.STOPPING):
        raise ConflictError(f"Stop the desktop “{desktop.name}” before deleting it.")
    previous = DesktopStatus(desktop.status)
    with transaction.atomic():
        desktop_transition(desktop=desktop, to=S.DELETING, actor=actor)
        _schedule(
            "desktops.tasks.delete_desktop", desktop.pk, undo=_undo_transition(desktop, previous)
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
            return _fail(
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
    _check_can_act(actor, desktop)
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
    with transaction.atomic():
        desktop.delete()
        if disk is not None:
            try:
                disk.delete()
            except ProtectedError as error:
                raise ConflictError("Its disk is still used by another disk.") from error
    if disk is not None:
        Path(disk.path).unlink(missing_ok=True)


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
    return purged


# --- keeping the database equal to what the hypervisors run -------------------------------


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


def desktops_reconcile(*, hypervisor: Hypervisor) -> int:
    """Compare every desktop placed on `hypervisor` with what it really runs."""
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
    return changed + _follow_guests_running_here(hypervisor=hypervisor, states=states)


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
                _record_event(
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


def desktop_get(*, actor: User, desktop_id: int) -> Desktop:
    desktop = Desktop.objects.filter(pk=desktop_id).first()
    if desktop is None or not can_act_on_desktop(actor, desktop):
        raise NotFoundError("No such desktop.")
    return desktop


#: How long a desktop may stay in a busy status before it is considered stuck.
STUCK_AFTER = timedelta(minutes=5)


#: How long the stuck-desktop sweep waits for one host's libvirt before moving on.
RECOVERY_LIBVIRT_TIMEOUT_SECONDS = 5.0


class _NoAnswer(Exception):
    """A libvirt call of the sweep did not return in time (a hung daemon)."""


def _within(seconds: float, call: Callable[..., Any], *args: Any) -> Any:
    """Run a libvirt call in a daemon thread; raise _NoAnswer if it takes longer.

    The driver's own bound (`ISARD_LIBVIRT_CALL_TIMEOUT_SECONDS`, a minute) suits a start
    on a loaded host, not a sweep over many desktops: a frozen daemon (stopped, or a host
    whose network went away) would cost it that much for each silent host. The abandoned thread
    stays blocked; being a daemon thread it holds nothing else up.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call(*args)
        except BaseException as error:  # handed to the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=run, name="isard-recovery-libvirt", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise _NoAnswer(f"no answer from libvirt within {seconds:.0f} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


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
        status__in=[S.CREATING, S.STARTING, S.STOPPING, S.DELETING, S.CREATING_TEMPLATE],
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
                state = _within(
                    RECOVERY_LIBVIRT_TIMEOUT_SECONDS,
                    libvirt_driver.domain_state,
                    host.uri,
                    desktop.domain_name,
                )
            except _NoAnswer:
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
            _within(
                RECOVERY_LIBVIRT_TIMEOUT_SECONDS,
                libvirt_driver.undefine_domain,
                hypervisor.uri,
                desktop.domain_name,
            )
            undefined = True
        except (_NoAnswer, libvirt_driver.DriverError) as error:
            logger.warning("could not undefine %s: %s", desktop.domain_name, error)
    if hypervisor is None or undefined:
        Desktop.objects.filter(pk=desktop.pk).update(hypervisor=None)
        desktop.hypervisor = None
    if disk is not None:
        Path(disk.path).unlink(missing_ok=True)
        disk.delete()
