"""New desktops: one from a template or install media, or a whole class at once."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from django.conf import settings
from django.db import transaction

from accounts.models import Course, User
from accounts.permissions import can_manage_course
from accounts.quotas import QuotaChange, quota_check, quota_check_many
from desktops import task_calls
from desktops.choices import DesktopStatus
from desktops.fleet.placement import (
    host_to_define_on,
    hypervisor_hand_off,
    hypervisors_hand_off_many,
    hypervisors_place_many,
)
from desktops.models import Desktop
from desktops.services.domains import desktop_define, desktop_domain_spec, desktop_domain_xml
from desktops.services.transitions import (
    desktop_fail,
    desktop_transition,
    desktops_record_created,
    desktops_transition,
    undo_creation,
)
from hypervisors import qemu_img
from hypervisors.choices import PoolPurpose
from hypervisors.drivers import libvirt_driver
from hypervisors.drivers.domain_xml import shape_key
from hypervisors.models import Disk, Hypervisor
from hypervisors.paths import PathOutsidePoolsError
from hypervisors.selectors import installation_uuid, storage_pool_directories
from hypervisors.services.disks import disk_create_empty, disk_path
from hypervisors.services.pools import pool_for
from isard.core.errors import (
    ApplicationError,
    ConflictError,
    InfrastructureError,
    NoCapacityError,
    PermissionDeniedError,
)
from isard.core.tasks import send_after_commit
from isard.core.text import name_check, text_check
from templates_app.choices import MediaStatus, TemplateStatus
from templates_app.models import HardwareProfile, Media, Template
from templates_app.selectors import template_is_visible_to

logger = logging.getLogger(__name__)


S = DesktopStatus


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
    name = name_check(name.strip())
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
            description=text_check(description),
            owner=owner,
            course=course,
            template=template,
            hardware=template.hardware,
            status=S.CREATING,
        )
        desktops_record_created([desktop], actor=actor)
        send_after_commit(
            task_calls.create_desktop(desktop_id=desktop.pk), undo=undo_creation([desktop.pk])
        )
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
    name = name_check(name.strip())
    if not name or len(name) > 200:
        raise ApplicationError("A desktop needs a name of at most 200 characters.")
    with transaction.atomic():
        quota_check(owner=actor, actor=actor, course=course, change=QuotaChange(desktops=1))
        desktop = Desktop.objects.create(
            name=name, owner=actor, course=course, hardware=hardware, status=S.CREATING
        )
        desktop.media.add(media)
        desktops_record_created([desktop], actor=actor)
        send_after_commit(
            task_calls.create_desktop(desktop_id=desktop.pk), undo=undo_creation([desktop.pk])
        )
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
        return desktop_fail(desktop, "The desktop has no template disk to start from.")
    disk: Disk | None = None
    hypervisor: Hypervisor | None = None
    try:
        if hypervisor_id is not None:
            hypervisor = Hypervisor.objects.filter(pk=hypervisor_id).first()
            if hypervisor is None:
                raise ConflictError("The hypervisor it was placed on is no longer registered.")
        else:
            hypervisor = host_to_define_on(desktop, pool_for(PoolPurpose.DESKTOPS))
            handed = task_calls.provision_desktop(desktop_id=desktop.pk, hypervisor=hypervisor)
            if hypervisor_hand_off(hypervisor=hypervisor, call=handed):
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
        desktop_define(desktop, hypervisor)
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
        return desktop_fail(desktop, f"Could not create the desktop: {message}")
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
        qemu_img.create_overlay(
            path,
            Path(parent.path),
            storage_pools=storage_pool_directories(),
            backing_format=parent.format,
        )
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
    name = name_check(name.strip())
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
        desktops_record_created(desktops, actor=actor)
        ids = [d.pk for d in desktops]
        send_after_commit(task_calls.create_desktops(desktop_ids=ids), undo=undo_creation(ids))
    return desktops


def _provision_io(
    uri: str,
    overlay: Path,
    backing: Path,
    backing_format: str,
    xml: str,
    shape: str,
    storage_pools: tuple[Path, ...],
) -> str | None:
    """Make one overlay and define one domain; the error message, or None. No database."""
    try:
        qemu_img.create_overlay(
            overlay, backing, storage_pools=storage_pools, backing_format=backing_format
        )
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
    installation = installation_uuid()
    storage_pools = storage_pool_directories()
    failures: dict[int, str] = {}
    jobs: list[tuple[int, str, Path, Path, str, str, str, tuple[Path, ...]]] = []
    # Each desktop is placed in turn, seeing the ones before it: a class spreads over the
    # fleet (or packs, per its course's policy) instead of landing on one host.
    placements: dict[int, Hypervisor | NoCapacityError]
    if placed_on is None:
        placements = hypervisors_place_many(desktops=desktops, storage_pool=pool)
        handed_off = hypervisors_hand_off_many(
            placements, lambda pairs: task_calls.provision_desktops(placed_on=pairs)
        )
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
                placed = host_to_define_on(desktop, pool, placed)
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
        spec = desktop_domain_spec(desktop, hypervisor, installation=installation)
        try:
            xml = desktop_domain_xml(spec, storage_pools=storage_pools)
        except PathOutsidePoolsError as error:
            failures[desktop.pk] = f"Could not create the desktop: {error.message}"
            continue
        jobs.append(
            (
                desktop.pk,
                hypervisor.uri,
                Path(desktop.disk.path),
                Path(parent.path),
                parent.format,
                xml,
                shape_key(spec),
                storage_pools,
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
