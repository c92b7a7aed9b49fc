"""Install media registered from a path on the server: copied into the media pool by a task."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

from django.conf import settings
from django.db import transaction

from accounts.models import User
from accounts.quotas import QuotaChange, quota_check
from hypervisors.choices import PoolPurpose
from hypervisors.paths import PathOutsidePoolsError, path_inside
from hypervisors.selectors import storage_pool_directories
from hypervisors.services.pools import pool_for
from isard.core.errors import ApplicationError, ConflictError, NotFoundError, PermissionDeniedError
from isard.core.tasks import send_after_commit
from isard.core.text import name_check
from templates_app import task_calls
from templates_app.choices import MediaKind, MediaStatus
from templates_app.models import Media
from templates_app.permissions import media_managed_by
from templates_app.services.transitions import media_record_created, media_transition


def media_path_check(path: str | Path) -> Path:
    """The real path of a media row's file, which must be in the media pool: a guest reads
    its CD-ROM, and libvirt hands the file to qemu whoever owns it."""
    try:
        return path_inside(path, storage_pool_directories(PoolPurpose.MEDIA))
    except PathOutsidePoolsError as error:
        raise PathOutsidePoolsError(
            f"{path} is not inside the media pool; media files live there.", extra=error.extra
        ) from error


def media_source_check(source: Path) -> Path:
    """The real path of a file media may be registered from: the media pool or a folder
    of `ISARD_MEDIA_IMPORT_DIRS`. Anywhere else could be any file the platform can read
    (its settings, its database), which the guest would then see."""
    folders = (*storage_pool_directories(PoolPurpose.MEDIA), *settings.ISARD_MEDIA_IMPORT_DIRS)
    try:
        return path_inside(source, folders)
    except PathOutsidePoolsError as error:
        raise PathOutsidePoolsError(
            f"Media can be registered only from the media pool or an import folder "
            f"(ISARD_MEDIA_IMPORT_DIRS); {source} is in neither.",
            extra=error.extra,
        ) from error


def media_register(*, actor: User, name: str, source: Path, kind: str = MediaKind.ISO) -> Media:
    """Register an ISO (or floppy image) from a path in the media pool or an import folder:
    copied into the media pool by a task."""
    if not actor.is_teacher:
        raise PermissionDeniedError("Only teachers can add media.")
    source = media_source_check(source)
    if not source.is_file():
        raise ApplicationError(f"There is no file at {source}.")
    name = name_check(name.strip() or source.name)

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
        media_record_created(media, actor=actor)
        send_after_commit(task_calls.import_media(media_id=media.pk, source=source))
    return media


MEDIA_CHUNK_BYTES = 4 * 1024 * 1024


def media_import(*, media_id: int, source: Path) -> Media:
    """Copy the file in chunks, hashing as it goes, with progress a page can show."""
    media = Media.objects.get(pk=media_id)
    if media.status != MediaStatus.COPYING:
        return media
    try:
        # Again here: the task's argument travelled through the queue, and a link may
        # have changed since it was registered.
        source = media_source_check(source)
        destination = media_path_check(media.path)
    except PathOutsidePoolsError as error:
        media_transition(media=media, to=MediaStatus.FAILED, reason=error.message)
        media.refresh_from_db()
        return media
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
        media_transition(
            media=media, to=MediaStatus.FAILED, reason=f"Could not copy {source}: {error}"
        )
        media.refresh_from_db()
        return media
    media_transition(
        media=media,
        to=MediaStatus.READY,
        sha256=digest.hexdigest(),
        size_bytes=copied,
        progress_percent=100,
    )
    media.refresh_from_db()
    return media


def media_delete(*, actor: User, media: Media) -> None:
    """Remove install media for good: its row, its events and its file (or part file).

    Refused while a desktop has it in its CD-ROM drive: that desktop would no longer
    start. Media one may not manage is, for that person, media that does not exist.
    """
    if not media_managed_by(actor).filter(pk=media.pk).exists():
        raise NotFoundError("No such media.")
    in_use = media.desktops.count()
    if in_use:
        raise ConflictError(
            f"“{media.name}” is in the CD-ROM drive of {in_use} desktops; take it out of "
            "them (or delete them) first.",
            extra={"desktops": in_use},
        )
    path = Path(media.path)
    media.delete()
    for leftover in (path, path.with_suffix(path.suffix + ".part")):
        try:
            leftover.chmod(0o644)  # a ready ISO is read-only
            leftover.unlink()
        except FileNotFoundError:
            pass
