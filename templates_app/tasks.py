"""Celery tasks for templates and media: take ids, call one service."""

from __future__ import annotations

from pathlib import Path

from celery import shared_task

from templates_app import task_calls
from templates_app.services.flatten import template_flatten_run
from templates_app.services.media import media_import
from templates_app.services.templates import templates_purge_expired
from templates_app.services.uploads import media_upload_verify, media_uploads_expire


@shared_task(name=task_calls.FLATTEN_TEMPLATE)
def flatten_template(template_id: int, source_id: int) -> str:
    return template_flatten_run(template_id=template_id, source_id=source_id).status


@shared_task(name=task_calls.IMPORT_MEDIA)
def import_media(media_id: int, source: str) -> str:
    return media_import(media_id=media_id, source=Path(source)).status


@shared_task(name=task_calls.VERIFY_MEDIA_UPLOAD)
def verify_media_upload(media_id: int, expected_sha256: str = "") -> str:
    return media_upload_verify(media_id=media_id, expected_sha256=expected_sha256).status


@shared_task(name=task_calls.EXPIRE_MEDIA_UPLOADS)
def expire_media_uploads() -> int:
    return media_uploads_expire()


@shared_task(name=task_calls.PURGE_TEMPLATE_RECYCLE_BIN)
def purge_template_recycle_bin() -> int:
    return templates_purge_expired()
