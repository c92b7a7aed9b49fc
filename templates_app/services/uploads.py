"""Install media uploaded from a browser, in resumable chunks, checked by its SHA-256."""

from __future__ import annotations

import hashlib
import re
import shutil
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import User
from accounts.quotas import QuotaChange, quota_check
from hypervisors.choices import PoolPurpose
from hypervisors.services.pools import pool_for
from isard.core.errors import ApplicationError, ConflictError, NotFoundError, PermissionDeniedError
from isard.core.tasks import send_after_commit
from isard.core.text import name_check
from templates_app import task_calls
from templates_app.choices import MediaKind, MediaStatus
from templates_app.models import Media
from templates_app.services.media import MEDIA_CHUNK_BYTES
from templates_app.services.transitions import MEDIA_STATES, media_record_created, media_transition

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
    name = name_check(name.strip())
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
    with transaction.atomic():
        # The declared size counts from the start: an upload over the person's quota is
        # refused before a byte is sent (and checked again at the finish).
        quota_check(owner=actor, actor=actor, change=QuotaChange(media=1, disk_bytes=size_bytes))
        media = Media.objects.create(
            name=name,
            kind=kind,
            owner=actor,
            path=str(Path(pool.path) / f"{uuid.uuid4()}.{kind}"),
            size_bytes=size_bytes,
            status=MediaStatus.UPLOADING,
        )
        media_record_created(media, actor=actor)
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


_SHA256 = re.compile(r"[0-9a-f]{64}")


def media_upload_finish(*, actor: User, media: Media, sha256: str = "") -> Media:
    """All bytes are here: check the file (its SHA-256, by a task) and make it usable.

    `sha256` is the client's hash of the file it sent (the page computes it as it
    uploads); the check then compares, and a file that arrived different fails.
    """
    sha256 = sha256.strip().lower()
    if sha256 and not _SHA256.fullmatch(sha256):
        raise ApplicationError(
            "The SHA-256 must be 64 hexadecimal digits.", extra={"field": "sha256"}
        )
    _check_upload(actor, media)
    received = media_upload_received(media)
    if received != media.size_bytes:
        raise ConflictError(
            f"The upload of “{media.name}” has {received} of {media.size_bytes} bytes.",
            extra={"offset": received},
        )

    with transaction.atomic():
        # Again at the end: other media may have become ready, or the quota changed, since
        # it began. Over it, the upload stays as it is (finish it after freeing space, or
        # cancel it); nothing is lost.
        quota_check(
            owner=media.owner or actor,
            actor=actor,
            change=QuotaChange(media=1, disk_bytes=media.size_bytes),
        )
        changed, _conflicts = MEDIA_STATES.transition_many(
            changes=[(media, {})], to=MediaStatus.VERIFYING, actor=actor
        )
        if changed:
            send_after_commit(
                task_calls.verify_media_upload(media_id=media.pk, expected_sha256=sha256)
            )
    media.refresh_from_db()
    return media


def media_upload_verify(*, media_id: int, expected_sha256: str = "") -> Media:
    """Hash the uploaded file, make it read-only and ready (run by a task).

    With the client's hash, a file that differs from the one sent (a proxy that cut it,
    a disk that failed) fails with both hashes, and its bytes are dropped.
    """
    media = Media.objects.get(pk=media_id)
    if media.status != MediaStatus.VERIFYING:
        return media
    part = _upload_part(media)
    digest = hashlib.sha256()
    try:
        with part.open("rb") as reader:
            while chunk := reader.read(MEDIA_CHUNK_BYTES):
                digest.update(chunk)
        if expected_sha256 and digest.hexdigest() != expected_sha256:
            part.unlink(missing_ok=True)
            media_transition(
                media=media,
                to=MediaStatus.FAILED,
                reason="The file that arrived is not the one that was sent (its SHA-256 is "
                f"{digest.hexdigest()}, the sender's {expected_sha256}); upload it again.",
            )
            media.refresh_from_db()
            return media
        part.chmod(0o444)
        part.replace(Path(media.path))
    except OSError as error:
        media_transition(
            media=media, to=MediaStatus.FAILED, reason=f"Could not check the upload: {error}"
        )
        media.refresh_from_db()
        return media
    media_transition(
        media=media, to=MediaStatus.READY, sha256=digest.hexdigest(), progress_percent=100
    )
    media.refresh_from_db()
    return media


def media_upload_cancel(*, actor: User, media: Media) -> None:
    """Drop an unfinished upload and its part file."""
    _check_upload(actor, media)
    _upload_part(media).unlink(missing_ok=True)
    media.delete()


def media_uploads_expire(*, now: datetime | None = None) -> int:
    """Fail the uploads nobody sent a byte to for `ISARD_MEDIA_UPLOAD_EXPIRY_HOURS`.

    An abandoned upload would otherwise hold its part file, and its declared size in its
    owner's quota, for ever. The last chunk's time is the part file's; the row stays, failed
    with the reason, so its owner sees what happened.
    """
    now = now or timezone.now()
    limit = (now - timedelta(hours=settings.ISARD_MEDIA_UPLOAD_EXPIRY_HOURS)).timestamp()
    expired = 0
    for media in Media.objects.filter(status=MediaStatus.UPLOADING):
        part = _upload_part(media)
        try:
            last = part.stat().st_mtime
        except FileNotFoundError:
            last = media.created_at.timestamp()
        if last > limit:
            continue
        part.unlink(missing_ok=True)
        try:
            media_transition(
                media=media,
                to=MediaStatus.FAILED,
                reason=f"The upload was not finished within "
                f"{settings.ISARD_MEDIA_UPLOAD_EXPIRY_HOURS} h; upload the file again.",
            )
        except ConflictError:
            continue  # it was finished or cancelled meanwhile
        expired += 1
    return expired
