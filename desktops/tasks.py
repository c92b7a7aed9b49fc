"""Celery tasks: take ids, call one service. Each is safe to run twice (services re-check).

Each task is registered under the name `desktops.task_calls` gives it; services send them
through the typed builders there, never by a name of their own.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.db import OperationalError
from django.utils import timezone

from desktops import task_calls
from desktops.fleet.drain import hypervisor_drain_continue
from desktops.fleet.monitoring import fleet_reconcile_all, hypervisor_reconcile
from desktops.fleet.rebalancing import hypervisors_rebalance_scheduled
from desktops.pools.services import pool_refill, pools_refill_all
from desktops.reports.rollup import usage_rollup
from desktops.services.idle import desktops_shut_down_idle
from desktops.services.lifecycle import (
    desktop_boot,
    desktop_force_off,
    desktop_send_shutdown,
    desktop_shutdown_timeout,
)
from desktops.services.provisioning import desktop_provision, desktops_provision_bulk
from desktops.services.reconciliation import desktops_recover_stuck
from desktops.services.recycle_bin import desktop_recycle, desktops_purge_expired
from desktops.services.renewal import desktop_renew, desktops_renew_volatile
from desktops.services.templating import template_finish_from_desktop
from desktops.services.time_limits import desktops_enforce_time_limits
from desktops.viewer.services import viewer_tokens_purge
from hypervisors.services.load import host_load_prune
from templates_app.services.templates import templates_purge_expired

# A database that is briefly locked or unreachable is worth a few retries: every service
# re-checks the desktop's status first, so running a task again is safe.
_RETRIES: dict[str, Any] = {
    "autoretry_for": (OperationalError,),
    "retry_backoff": 1,
    "retry_backoff_max": 30,
    "max_retries": 5,
}


# --- new desktops: place (central), then provision (on the host's worker) -------------------


@shared_task(name=task_calls.CREATE_DESKTOP, **_RETRIES)
def create_desktop(desktop_id: int) -> str:
    return desktop_provision(desktop_id=desktop_id).status


@shared_task(name=task_calls.PROVISION_DESKTOP, **_RETRIES)
def provision_desktop(desktop_id: int, hypervisor_id: int) -> str:
    return desktop_provision(desktop_id=desktop_id, hypervisor_id=hypervisor_id).status


@shared_task(name=task_calls.CREATE_DESKTOPS, **_RETRIES)
def create_desktops(desktop_ids: list[int]) -> int:
    return len(desktops_provision_bulk(desktop_ids=desktop_ids))


@shared_task(name=task_calls.PROVISION_DESKTOPS, **_RETRIES)
def provision_desktops(placed_on: list[list[int]]) -> int:
    desktop_ids = [desktop_id for desktop_id, _host_id in placed_on]
    return len(desktops_provision_bulk(desktop_ids=desktop_ids, placed_on=placed_on))


# --- starting: place (central), then boot (on the host's worker) ----------------------------


@shared_task(name=task_calls.START_DESKTOP, **_RETRIES)
def start_desktop(desktop_id: int) -> str:
    return desktop_boot(desktop_id=desktop_id).status


@shared_task(name=task_calls.BOOT_DESKTOP, **_RETRIES)
def boot_desktop(desktop_id: int, hypervisor_id: int) -> str:
    return desktop_boot(desktop_id=desktop_id, hypervisor_id=hypervisor_id).status


# --- stopping and deleting (on the host's worker) -------------------------------------------


@shared_task(name=task_calls.SHUTDOWN_DESKTOP, **_RETRIES)
def shutdown_desktop(desktop_id: int) -> str:
    return desktop_send_shutdown(desktop_id=desktop_id).status


@shared_task(name=task_calls.SHUTDOWN_TIMEOUT, **_RETRIES)
def shutdown_timeout(desktop_id: int) -> str:
    return desktop_shutdown_timeout(desktop_id=desktop_id).status


@shared_task(name=task_calls.FORCE_OFF_DESKTOP, **_RETRIES)
def force_off_desktop(desktop_id: int) -> str:
    return desktop_force_off(desktop_id=desktop_id).status


@shared_task(name=task_calls.DELETE_DESKTOP, **_RETRIES)
def delete_desktop(desktop_id: int) -> str:
    return desktop_recycle(desktop_id=desktop_id).status


@shared_task(name=task_calls.MAKE_TEMPLATE)
def make_template(template_id: int, desktop_id: int) -> str:
    return template_finish_from_desktop(template_id=template_id, desktop_id=desktop_id).status


@shared_task(name=task_calls.RENEW_DESKTOP, **_RETRIES)
def renew_desktop(desktop_id: int, put_back: int | None = None) -> str:
    return desktop_renew(desktop_id=desktop_id, put_back=put_back).status


@shared_task(name=task_calls.RENEW_VOLATILE, **_RETRIES)
def renew_volatile(desktop_ids: list[int]) -> int:
    return desktops_renew_volatile(desktop_ids=desktop_ids)


# --- periodic (beat) ---------------------------------------------------------------------------


@shared_task(name=task_calls.PURGE_RECYCLE_BIN, **_RETRIES)
def purge_recycle_bin() -> int:
    """Desktops first: a template can only go once nothing is built on it."""
    return desktops_purge_expired() + templates_purge_expired()


@shared_task(name=task_calls.ENFORCE_TIME_LIMITS)
def enforce_time_limits() -> dict[str, int]:
    return desktops_enforce_time_limits()


@shared_task(name=task_calls.SHUT_DOWN_IDLE)
def shut_down_idle() -> int:
    return desktops_shut_down_idle()


@shared_task(name=task_calls.RECOVER_STUCK_DESKTOPS)
def recover_stuck_desktops() -> int:
    return desktops_recover_stuck()


@shared_task(name=task_calls.SUM_USAGE, **_RETRIES)
def sum_usage() -> int:
    """The hours that are over into the usage rows; the hosts' old load samples out."""
    now = timezone.now()
    host_load_prune(now=now)
    return usage_rollup(now=now)


@shared_task(name=task_calls.REFILL_POOL, **_RETRIES)
def refill_pool(pool_id: int) -> dict[str, int]:
    return pool_refill(pool_id=pool_id)


@shared_task(name=task_calls.REFILL_POOLS)
def refill_pools() -> int:
    return pools_refill_all()


@shared_task(name=task_calls.PURGE_VIEWER_TOKENS)
def purge_viewer_tokens() -> int:
    """Spent and expired viewer tokens: worthless, so dropped after their retention."""
    return viewer_tokens_purge()


# --- the fleet -----------------------------------------------------------------------------------


@shared_task(name=task_calls.RECONCILE_ALL_HYPERVISORS)
def reconcile_all_hypervisors() -> dict[str, int]:
    return fleet_reconcile_all()


@shared_task(name=task_calls.RECONCILE_HYPERVISOR)
def reconcile_hypervisor(hypervisor_id: int) -> int:
    return hypervisor_reconcile(hypervisor_id=hypervisor_id)


@shared_task(name=task_calls.DRAIN_HYPERVISOR)
def drain_hypervisor(hypervisor_id: int, actor_id: int | None = None) -> dict[str, Any]:
    return hypervisor_drain_continue(hypervisor_id=hypervisor_id, actor_id=actor_id)


@shared_task(name=task_calls.REBALANCE_HYPERVISORS)
def rebalance_hypervisors() -> dict[str, Any]:
    return hypervisors_rebalance_scheduled()
