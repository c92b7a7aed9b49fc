"""Celery tasks: take ids, call one service. Each is safe to run twice (services re-check)."""

from __future__ import annotations

from celery import shared_task
from django.db import OperationalError

from desktops import services
from hypervisors.selectors import desktop_live_migrating
from hypervisors.services import schedule_after_commit

# A database that is briefly locked or unreachable is worth a few retries: every service
# re-checks the desktop's status first, so running a task again is safe.
engine_task = shared_task(
    autoretry_for=(OperationalError,), retry_backoff=1, retry_backoff_max=30, max_retries=5
)


#: How often a shutdown or a force-off looks again while its desktop is live-migrating.
MIGRATION_RECHECK_SECONDS = 2
WAITING_FOR_MIGRATION = "waiting for its live migration to finish"


def _after_migration(task_name: str, desktop_id: int) -> bool:
    """True if the desktop is being live-migrated: the task is sent again a bit later.

    Shutting a guest down or forcing it off on its old host mid-migration is refused by
    libvirt (the domain has a job) or hits the copy that is about to go while the new one
    runs on. Sent again, the task is routed to the host the desktop is on by then.
    """
    if not desktop_live_migrating(desktop_id=desktop_id):
        return False
    schedule_after_commit(task_name, desktop_id, countdown=MIGRATION_RECHECK_SECONDS)
    return True


# A task that names a host (`hypervisor_id`, `placed_on`) runs on that host's own worker:
# the placement was made by a first run of the same task (see `hypervisors.routing`).


@engine_task
def provision_desktop(desktop_id: int, hypervisor_id: int | None = None) -> str:
    return services.desktop_provision(desktop_id=desktop_id, hypervisor_id=hypervisor_id).status


@engine_task
def provision_desktops(desktop_ids: list[int], placed_on: list[list[int]] | None = None) -> int:
    return len(services.desktops_provision_bulk(desktop_ids=desktop_ids, placed_on=placed_on))


@engine_task
def boot_desktop(desktop_id: int, hypervisor_id: int | None = None) -> str:
    return services.desktop_boot(desktop_id=desktop_id, hypervisor_id=hypervisor_id).status


@engine_task
def shutdown_desktop(desktop_id: int) -> str:
    if _after_migration("desktops.tasks.shutdown_desktop", desktop_id):
        return WAITING_FOR_MIGRATION
    return services.desktop_send_shutdown(desktop_id=desktop_id).status


@engine_task
def shutdown_timeout(desktop_id: int) -> str:
    if _after_migration("desktops.tasks.shutdown_timeout", desktop_id):
        return WAITING_FOR_MIGRATION
    return services.desktop_shutdown_timeout(desktop_id=desktop_id).status


@engine_task
def force_off_desktop(desktop_id: int) -> str:
    if _after_migration("desktops.tasks.force_off_desktop", desktop_id):
        return WAITING_FOR_MIGRATION
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
    from desktops.viewer.services import viewer_tokens_purge

    return viewer_tokens_purge()
