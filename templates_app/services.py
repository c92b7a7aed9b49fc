"""Writes for templates: registering base images and turning desktops into templates."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from django.conf import settings
from django.db import transaction
from django.db.models import ProtectedError
from django.utils import timezone

from accounts.models import Course, User
from accounts.permissions import can_manage_template
from accounts.quotas import QuotaChange, quota_check
from hypervisors import qemu_img
from hypervisors.choices import PoolPurpose
from hypervisors.models import Disk
from hypervisors.services import (
    disk_create_overlay,
    disk_import,
    disk_path,
    disk_record,
    disk_refresh_size,
    pool_for,
)
from isard.core.errors import ApplicationError, ConflictError, NotFoundError, PermissionDeniedError
from templates_app.choices import MediaKind, MediaStatus, TemplateStatus
from templates_app.models import HardwareProfile, Media, Template
from templates_app.selectors import template_dependants


def template_register_base(
    *,
    name: str,
    image: Path,
    hardware: HardwareProfile,
    owner: User | None = None,
    shared_with_everyone: bool = True,
    description: str = "",
) -> Template:
    """Copy an existing disk image into the base pool and offer it as a root template."""
    if not image.exists():
        raise ApplicationError(f"The image {image} does not exist.")
    disk = disk_import(source=image, pool=pool_for(PoolPurpose.BASE))
    return Template.objects.create(
        name=name,
        description=description,
        owner=owner,
        disk=disk,
        hardware=hardware,
        status=TemplateStatus.READY,
        shared_with_everyone=shared_with_everyone,
    )


def template_from_desktop(
    *, actor: User, desktop_id: int, name: str, description: str = ""
) -> Template:
    """Start turning a stopped desktop into a template (the work is a task).

    The desktop's own disk becomes the template's, read-only, and the desktop continues on
    a fresh overlay above it: no data is copied, and the teacher keeps working.
    """
    from desktops.choices import DesktopStatus
    from desktops.models import Desktop
    from desktops.services import _schedule, _undo_transition, desktop_transition

    desktop = Desktop.objects.select_related("template", "hardware").get(pk=desktop_id)
    if desktop.owner_id != actor.pk and not actor.is_admin:
        raise PermissionDeniedError("Only the desktop's owner can make a template of it.")
    if not actor.is_teacher:
        raise PermissionDeniedError("Only teachers can make templates.")
    name = name.strip()
    if not name:
        raise ApplicationError("A template needs a name.")
    if desktop.status != DesktopStatus.STOPPED:
        raise ConflictError(f"Stop the desktop “{desktop.name}” before making a template of it.")
    with transaction.atomic():
        quota_check(owner=actor, actor=actor, change=QuotaChange(templates=1))
        desktop_transition(desktop=desktop, to=DesktopStatus.CREATING_TEMPLATE, actor=actor)
        template = Template.objects.create(
            name=name,
            description=description,
            owner=actor,
            parent=desktop.template,
            hardware=desktop.hardware,
            status=TemplateStatus.CREATING,
        )
        put_back = _undo_transition(desktop, DesktopStatus.STOPPED)

        def undo(reason: str) -> None:
            # The task queue is unreachable: nothing was made, so the new row goes and
            # the desktop is stopped again, as it was (see desktops.services.send_task).
            Template.objects.filter(pk=template.pk, status=TemplateStatus.CREATING).delete()
            put_back(reason)

        _schedule("templates_app.tasks.make_template", template.pk, desktop.pk, undo=undo)
    return template


def template_finish_from_desktop(*, template_id: int, desktop_id: int) -> Template:
    """Move the desktop's disk under the template and give the desktop a new overlay."""
    from desktops.choices import DesktopStatus
    from desktops.models import Desktop
    from desktops.services import desktop_transition

    template = Template.objects.get(pk=template_id)
    desktop = Desktop.objects.select_related("disk").get(pk=desktop_id)
    if (
        template.status != TemplateStatus.CREATING
        or desktop.status != DesktopStatus.CREATING_TEMPLATE
    ):
        return template
    old_disk = desktop.disk
    if old_disk is None:
        raise ConflictError("The desktop has no disk.")
    old_path = Path(old_disk.path)
    templates_pool = pool_for(PoolPurpose.TEMPLATES)
    new_path = disk_path(templates_pool)
    try:
        shutil.move(old_path, new_path)
        os.chmod(new_path, 0o444)
        Disk.objects.filter(pk=old_disk.pk).update(
            pool=templates_pool, path=str(new_path), read_only=True
        )
        old_disk.refresh_from_db()
        try:
            overlay = disk_create_overlay(parent=old_disk)
        except Exception:
            # Put the disk back exactly where the desktop expects it.
            os.chmod(new_path, 0o644)
            shutil.move(new_path, old_path)
            Disk.objects.filter(pk=old_disk.pk).update(
                pool=desktop.disk.pool if desktop.disk else templates_pool,
                path=str(old_path),
                read_only=False,
            )
            raise
    except (OSError, ApplicationError, qemu_img.QemuImgError) as error:
        message = getattr(error, "message", str(error))
        Template.objects.filter(pk=template.pk).update(
            status=TemplateStatus.FAILED, status_reason=message
        )
        desktop_transition(
            desktop=desktop, to=DesktopStatus.STOPPED, reason=f"Template failed: {message}"
        )
        template.refresh_from_db()
        return template
    disk_refresh_size(disk=old_disk)
    with transaction.atomic():
        Template.objects.filter(pk=template.pk).update(disk=old_disk, status=TemplateStatus.READY)
        desktop_transition(
            desktop=desktop,
            to=DesktopStatus.STOPPED,
            reason=f"Now based on the template “{template.name}”.",
            disk=overlay,
            template=template,
        )
    template.refresh_from_db()
    return template


def template_delete(*, actor: User, template: Template) -> Template:
    """Move a template to the recycle bin, unless anything depends on it."""
    if not can_manage_template(actor, template):
        raise PermissionDeniedError("This template is not yours.")
    dependants = template_dependants(template)
    if any(dependants.values()):
        blocking = ", ".join(f"{len(names)} {kind}" for kind, names in dependants.items() if names)
        raise ConflictError(
            f"The template “{template.name}” cannot be deleted: {blocking} depend on it "
            f"({'; '.join(name for names in dependants.values() for name in names[:10])}).",
            extra={"dependants": dependants},
        )
    Template.objects.filter(pk=template.pk).update(
        status=TemplateStatus.DELETED, deleted_at=timezone.now()
    )
    template.refresh_from_db()
    return template


def template_restore(*, actor: User, template: Template) -> Template:
    if not can_manage_template(actor, template):
        raise PermissionDeniedError("This template is not yours.")
    if template.status != TemplateStatus.DELETED:
        raise ConflictError(f"The template “{template.name}” is not in the recycle bin.")
    Template.objects.filter(pk=template.pk).update(status=TemplateStatus.READY, deleted_at=None)
    template.refresh_from_db()
    return template


def template_set_sharing(
    *,
    actor: User,
    template: Template,
    everyone: bool | None = None,
    courses: Sequence[Course] | None = None,
    users: Sequence[User] | None = None,
) -> Template:
    """Choose who may create desktops from the template (None leaves a part unchanged).

    A teacher shares with the courses they are in and the people they can see (their
    students); only an administrator shares with everyone, across every school.
    """
    from accounts.permissions import courses_visible_to, users_visible_to

    if not can_manage_template(actor, template):
        raise PermissionDeniedError("This template is not yours.")
    if everyone and not actor.is_admin and not template.shared_with_everyone:
        raise PermissionDeniedError("Only administrators share a template with everyone.")
    if courses is not None:
        allowed = set(courses_visible_to(actor).values_list("pk", flat=True))
        unknown = sorted(c.pk for c in courses if c.pk not in allowed)
        if unknown:
            raise ApplicationError(
                "You cannot share with those courses.", extra={"courses": unknown}
            )
    if users is not None:
        allowed = set(users_visible_to(actor).values_list("pk", flat=True))
        unknown = sorted(u.pk for u in users if u.pk not in allowed)
        if unknown:
            raise ApplicationError("You cannot share with those people.", extra={"users": unknown})
    with transaction.atomic():
        if everyone is not None:
            Template.objects.filter(pk=template.pk).update(shared_with_everyone=everyone)
        if courses is not None:
            template.shared_courses.set(courses)
        if users is not None:
            template.shared_users.set(users)
    template.refresh_from_db()
    return template


def template_purge(*, template: Template) -> None:
    """Remove a recycled template and its disk for good; refused while anything depends on it."""
    if template.status != TemplateStatus.DELETED:
        raise ConflictError(f"The template “{template.name}” is not in the recycle bin.")
    disk = template.disk
    try:
        with transaction.atomic():
            template.delete()
            if disk is not None and not disk.templates.exists():
                disk.delete()
            else:
                disk = None
    except ProtectedError as error:
        raise ConflictError(
            f"The template “{template.name}” still has dependants.",
            extra={"dependants": template_dependants(template)},
        ) from error
    if disk is not None:
        Path(disk.path).unlink(missing_ok=True)


def template_flatten(*, actor: User, template: Template, name: str) -> Template:
    """Start copying a template's whole chain into one standalone disk (a long task).

    The new template has no parent: it survives even if the chain it came from is purged,
    at the cost of a full copy of the disk.
    """
    if not actor.is_teacher:
        raise PermissionDeniedError("Only teachers can make templates.")
    if not can_manage_template(actor, template):
        raise PermissionDeniedError("This template is not yours.")
    if template.status != TemplateStatus.READY or template.disk is None:
        raise ConflictError(f"The template “{template.name}” is not ready.")
    name = name.strip()
    if not name:
        raise ApplicationError("A template needs a name.")
    from desktops.services import _schedule

    with transaction.atomic():
        quota_check(owner=actor, actor=actor, change=QuotaChange(templates=1))
        flat = Template.objects.create(
            name=name,
            description=f"A standalone copy of “{template.name}”.",
            owner=actor,
            hardware=template.hardware,
            status=TemplateStatus.CREATING,
        )
        _schedule("templates_app.tasks.flatten_template", flat.pk, template.pk)
    return flat


def template_flatten_run(*, template_id: int, source_id: int) -> Template:
    """Run `qemu-img convert` of the source chain, recording progress as it goes."""
    template = Template.objects.get(pk=template_id)
    source = Template.objects.select_related("disk").get(pk=source_id)
    if template.status != TemplateStatus.CREATING or source.disk is None:
        return template
    pool = pool_for(PoolPurpose.TEMPLATES)
    destination = disk_path(pool)
    last = [-1.0, 0.0]  # percent and time of the last database write

    def on_progress(percent: float) -> None:
        # One write per whole percent at most, and never more than 4 a second.
        now = time.monotonic()
        if int(percent) > last[0] and now - last[1] > 0.25:
            Template.objects.filter(pk=template.pk).update(progress_percent=int(percent))
            last[0], last[1] = int(percent), now

    try:
        qemu_img.convert(Path(source.disk.path), destination, on_progress=on_progress)
        os.chmod(destination, 0o444)
        disk = disk_record(pool=pool, path=destination, read_only=True)
    except (qemu_img.QemuImgError, OSError) as error:
        destination.unlink(missing_ok=True)
        Template.objects.filter(pk=template.pk).update(
            status=TemplateStatus.FAILED, status_reason=f"Could not copy the disk: {error}"
        )
        template.refresh_from_db()
        return template
    Template.objects.filter(pk=template.pk).update(
        disk=disk, status=TemplateStatus.READY, progress_percent=100
    )
    template.refresh_from_db()
    return template


def templates_purge_expired(*, now: datetime | None = None) -> int:
    """Purge templates that waited in the recycle bin longer than the retention."""
    now = now or timezone.now()
    limit = now - timedelta(days=settings.ISARD_RECYCLE_RETENTION_DAYS)
    purged = 0
    for template in Template.objects.filter(status=TemplateStatus.DELETED, deleted_at__lt=limit):
        try:
            template_purge(template=template)
            purged += 1
        except ConflictError:
            pass  # something was built on it after all: it stays
    return purged


def media_register(*, actor: User, name: str, source: Path, kind: str = MediaKind.ISO) -> Media:
    """Register an ISO (or floppy image) from a path: copied into the media pool by a task."""
    if not actor.is_teacher:
        raise PermissionDeniedError("Only teachers can add media.")
    if not source.is_file():
        raise ApplicationError(f"There is no file at {source}.")
    name = name.strip() or source.name
    from desktops.services import _schedule

    pool = pool_for(PoolPurpose.MEDIA)
    with transaction.atomic():
        quota_check(
            owner=actor, actor=actor, change=QuotaChange(media=1, disk_bytes=source.stat().st_size)
        )
        media = Media.objects.create(
            name=name,
            kind=kind,
            owner=actor,
            path=str(Path(pool.path) / f"{uuid.uuid4()}.{kind}"),
            size_bytes=source.stat().st_size,
            status=MediaStatus.COPYING,
        )
        _schedule("templates_app.tasks.import_media", media.pk, str(source))
    return media


MEDIA_CHUNK_BYTES = 4 * 1024 * 1024


def media_import(*, media_id: int, source: Path) -> Media:
    """Copy the file in chunks, hashing as it goes, with progress a page can show."""
    media = Media.objects.get(pk=media_id)
    if media.status != MediaStatus.COPYING:
        return media
    destination = Path(media.path)
    partial = destination.with_suffix(destination.suffix + ".part")
    digest = hashlib.sha256()
    total = max(1, source.stat().st_size)
    copied = 0
    last_percent = -1
    try:
        with source.open("rb") as reader, partial.open("wb") as writer:
            while chunk := reader.read(MEDIA_CHUNK_BYTES):
                writer.write(chunk)
                digest.update(chunk)
                copied += len(chunk)
                percent = copied * 100 // total
                if percent != last_percent:
                    Media.objects.filter(pk=media.pk).update(progress_percent=percent)
                    last_percent = percent
        partial.chmod(0o444)
        partial.replace(destination)
    except OSError as error:
        partial.unlink(missing_ok=True)
        Media.objects.filter(pk=media.pk).update(
            status=MediaStatus.FAILED, status_reason=f"Could not copy {source}: {error}"
        )
        media.refresh_from_db()
        return media
    Media.objects.filter(pk=media.pk).update(
        status=MediaStatus.READY, sha256=digest.hexdigest(), size_bytes=copied, progress_percent=100
    )
    media.refresh_from_db()
    return media


# --- media uploaded from a browser, in chunks ---------------------------------------------

#: The largest chunk one request may carry; the page sends 8 MiB.
MEDIA_UPLOAD_MAX_CHUNK_BYTES = 64 * 1024 * 1024
#: An ISO larger than this is surely a mistake (a disk image picked by accident).
MEDIA_UPLOAD_MAX_BYTES = 64 * 1024**3


class Readable(Protocol):
    """Where a chunk comes from: a request body, a file."""

    def read(self, size: int = -1, /) -> bytes: ...


def _upload_part(media: Media) -> Path:
    path = Path(media.path)
    return path.with_suffix(path.suffix + ".part")


def media_upload_begin(
    *, actor: User, name: str, size_bytes: int, kind: str = MediaKind.ISO
) -> Media:
    """Open an upload: a Media row in "uploading" and an empty part file in the media pool.

    The browser then sends the file in chunks (`media_upload_chunk`), so a 5 GB ISO
    needs no request of 5 GB, shows its progress, and resumes after a dropped
    connection from where the server says it is. A file that cannot fit in the pool is
    refused now, not at 97%.
    """
    if not actor.is_teacher:
        raise PermissionDeniedError("Only teachers can add media.")
    name = name.strip()
    if not name:
        raise ApplicationError("Media need a name.")
    if kind not in MediaKind.values:
        raise ApplicationError(
            f"Unknown kind of media “{kind}”.", extra={"kinds": MediaKind.values}
        )
    if size_bytes <= 0 or size_bytes > MEDIA_UPLOAD_MAX_BYTES:
        raise ApplicationError(
            f"An upload must be between 1 byte and {MEDIA_UPLOAD_MAX_BYTES // 1024**3} GiB."
        )
    pool = pool_for(PoolPurpose.MEDIA)
    free = shutil.disk_usage(pool.path).free
    if size_bytes > free:
        raise ApplicationError(
            f"The media pool has {free / 1024**3:.1f} GiB free; this file needs "
            f"{size_bytes / 1024**3:.1f} GiB.",
            extra={"free_bytes": free, "size_bytes": size_bytes},
        )
    media = Media.objects.create(
        name=name,
        kind=kind,
        owner=actor,
        path=str(Path(pool.path) / f"{uuid.uuid4()}.{kind}"),
        size_bytes=size_bytes,
        status=MediaStatus.UPLOADING,
    )
    _upload_part(media).touch(mode=0o644)
    return media


def media_upload_received(media: Media) -> int:
    """How many bytes of the upload the server holds: where the next chunk starts."""
    try:
        return _upload_part(media).stat().st_size
    except FileNotFoundError:
        return 0


def _check_upload(actor: User, media: Media) -> None:
    if media.owner_id != actor.pk and not actor.is_admin:
        raise NotFoundError("No such media.")
    if media.status != MediaStatus.UPLOADING:
        raise ConflictError(
            f"“{media.name}” is not being uploaded (it is {media.get_status_display().lower()}).",
            extra={"status": media.status},
        )


def media_upload_chunk(*, actor: User, media: Media, offset: int, stream: Readable) -> int:
    """Append one chunk at `offset`; returns the bytes now held.

    A chunk for the wrong offset (sent twice, or after a gap) is refused with the offset
    the server expects, so the page resends from there and nothing is written twice.
    """
    _check_upload(actor, media)
    received = media_upload_received(media)
    if offset != received:
        raise ConflictError(
            f"The upload of “{media.name}” continues at byte {received}, not {offset}.",
            extra={"offset": received},
        )
    written = 0
    with _upload_part(media).open("ab") as part:
        while block := stream.read(1024 * 1024):
            written += len(block)
            if written > MEDIA_UPLOAD_MAX_CHUNK_BYTES or received + written > media.size_bytes:
                part.truncate(received)
                raise ApplicationError(
                    "This chunk goes past the end of the file or the largest chunk allowed.",
                    extra={"offset": received},
                )
            part.write(block)
    received += written
    Media.objects.filter(pk=media.pk).update(
        progress_percent=min(99, received * 100 // max(1, media.size_bytes))
    )
    return received


def media_upload_finish(*, actor: User, media: Media) -> Media:
    """All bytes are here: check the file (its SHA-256, by a task) and make it usable."""
    _check_upload(actor, media)
    received = media_upload_received(media)
    if received != media.size_bytes:
        raise ConflictError(
            f"The upload of “{media.name}” has {received} of {media.size_bytes} bytes.",
            extra={"offset": received},
        )
    from desktops.services import _schedule

    with transaction.atomic():
        updated = Media.objects.filter(pk=media.pk, status=MediaStatus.UPLOADING).update(
            status=MediaStatus.VERIFYING
        )
        if updated:
            _schedule("templates_app.tasks.verify_media_upload", media.pk)
    media.refresh_from_db()
    return media


def media_upload_verify(*, media_id: int) -> Media:
    """Hash the uploaded file, make it read-only and ready (run by a task)."""
    media = Media.objects.get(pk=media_id)
    if media.status != MediaStatus.VERIFYING:
        return media
    part = _upload_part(media)
    digest = hashlib.sha256()
    try:
        with part.open("rb") as reader:
            while chunk := reader.read(MEDIA_CHUNK_BYTES):
                digest.update(chunk)
        part.chmod(0o444)
        part.replace(Path(media.path))
    except OSError as error:
        Media.objects.filter(pk=media.pk).update(
            status=MediaStatus.FAILED, status_reason=f"Could not check the upload: {error}"
        )
        media.refresh_from_db()
        return media
    Media.objects.filter(pk=media.pk).update(
        status=MediaStatus.READY, sha256=digest.hexdigest(), progress_percent=100
    )
    media.refresh_from_db()
    return media


def media_upload_cancel(*, actor: User, media: Media) -> None:
    """Drop an unfinished upload and its part file."""
    _check_upload(actor, media)
    _upload_part(media).unlink(missing_ok=True)
    media.delete()
