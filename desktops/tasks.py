"""Celery tasks: take ids, call one service. Each is safe to run twice (services re-check)."""

from __future__ import annotations

from celery import shared_task
from django.db import OperationalError

from desktops import services

# A database that is briefly locked or unreachable is worth a few retries: every service
# re-checks the desktop's status first, so running a task again is safe.
engine_task = shared_task(
    autoretry_for=(OperationalError,), retry_backoff=1, retry_backoff_max=30, max_retries=5
)


@engine_task
def provision_desktop(desktop_id: int) -> str:
    return services.desktop_provision(desktop_id=desktop_id).status


@engine_task
def provision_desktops(desktop_ids: list[int]) -> int:
    return len(services.desktops_provision_bulk(desktop_ids=desktop_ids))


@engine_task
def boot_desktop(desktop_id: int) -> str:
    return services.desktop_boot(desktop_id=desktop_id).status


@engine_task
def shutdown_desktop(desktop_id: int) -> str:
    return services.desktop_send_shutdown(desktop_id=desktop_id).status


@engine_task
def shutdown_timeout(desktop_id: int) -> str:
    return services.desktop_shutdown_timeout(desktop_id=desktop_id).status


@engine_task
def force_off_desktop(desktop_id: int) -> str:
    return services.desktop_force_off(desktop_id=desktop_id).status


@engine_task
def delete_desktop(desktop_id: int) -> str:
    return services.desktop_recycle(desktop_id=desktop_id).status


@engine_task
def purge_recycle_bin() -> int:
    """Desktops first: a template can only go once nothing is built on it."""
    from templates_app.services import templates_purge_expired

    return services.desktops_purge_expired() + templates_purge_expired()


@shared_task
def recover_stuck_desktops() -> int:
    return services.desktops_recover_stuck()


@shared_task
def purge_viewer_tokens() -> int:
    """Spent and expired viewer tokens: worthless, so dropped after their retention."""
    from desktops.viewers import viewer_tokens_purge

    return viewer_tokens_purge()
