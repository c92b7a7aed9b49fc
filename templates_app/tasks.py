"""Celery tasks for templates."""

from __future__ import annotations

from celery import shared_task

from templates_app import services


@shared_task
def make_template(template_id: int, desktop_id: int) -> str:
    return services.template_finish_from_desktop(
        template_id=template_id, desktop_id=desktop_id
    ).status
