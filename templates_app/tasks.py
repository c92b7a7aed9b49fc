"""Celery tasks for templates."""

from __future__ import annotations

from pathlib import Path

from celery import shared_task

from templates_app import services


@shared_task
def make_template(template_id: int, desktop_id: int) -> str:
    return services.template_finish_from_desktop(
        template_id=template_id, desktop_id=desktop_id
    ).status


@shared_task
def flatten_template(template_id: int, source_id: int) -> str:
    return services.template_flatten_run(template_id=template_id, source_id=source_id).status


@shared_task
def import_media(media_id: int, source: str) -> str:
    return services.media_import(media_id=media_id, source=Path(source)).status


@shared_task
def verify_media_upload(media_id: int) -> str:
    return services.media_upload_verify(media_id=media_id).status


@shared_task
def purge_template_recycle_bin() -> int:
    return services.templates_purge_expired()
