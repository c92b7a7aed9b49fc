"""The templates' and media's tasks as typed calls: each name is spelled here and only here."""

from __future__ import annotations

from pathlib import Path

from isard.core.task_call import TaskCall

FLATTEN_TEMPLATE = "templates_app.tasks.flatten_template"
IMPORT_MEDIA = "templates_app.tasks.import_media"
VERIFY_MEDIA_UPLOAD = "templates_app.tasks.verify_media_upload"
PURGE_TEMPLATE_RECYCLE_BIN = "templates_app.tasks.purge_template_recycle_bin"
EXPIRE_MEDIA_UPLOADS = "templates_app.tasks.expire_media_uploads"


def flatten_template(*, template_id: int, source_id: int) -> TaskCall:
    return TaskCall(FLATTEN_TEMPLATE, {"template_id": template_id, "source_id": source_id})


def import_media(*, media_id: int, source: Path) -> TaskCall:
    return TaskCall(IMPORT_MEDIA, {"media_id": media_id, "source": str(source)})


def verify_media_upload(*, media_id: int, expected_sha256: str = "") -> TaskCall:
    return TaskCall(VERIFY_MEDIA_UPLOAD, {"media_id": media_id, "expected_sha256": expected_sha256})
