"""Celery tasks: take ids, call one service. Each is safe to run twice (services re-check)."""

from __future__ import annotations

from celery import shared_task

from desktops import services


@shared_task
def provision_desktop(desktop_id: int) -> str:
    return services.desktop_provision(desktop_id=desktop_id).status


@shared_task
def provision_desktops(desktop_ids: list[int]) -> int:
    return len(services.desktops_provision_bulk(desktop_ids=desktop_ids))


@shared_task
def boot_desktop(desktop_id: int) -> str:
    return services.desktop_boot(desktop_id=desktop_id).status


@shared_task
def shutdown_desktop(desktop_id: int) -> str:
    return services.desktop_send_shutdown(desktop_id=desktop_id).status


@shared_task
def shutdown_timeout(desktop_id: int) -> str:
    return services.desktop_shutdown_timeout(desktop_id=desktop_id).status


@shared_task
def force_off_desktop(desktop_id: int) -> str:
    return services.desktop_force_off(desktop_id=desktop_id).status


@shared_task
def delete_desktop(desktop_id: int) -> str:
    return services.desktop_recycle(desktop_id=desktop_id).status


@shared_task
def purge_recycle_bin() -> int:
    """Desktops first: a template can only go once nothing is built on it."""
    from templates_app.services import templates_purge_expired

    return services.desktops_purge_expired() + templates_purge_expired()
