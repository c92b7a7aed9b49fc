"""Periodic and on-demand tasks of the fleet: monitoring, reconciliation, drains, rebalancing.

Each takes ids, calls services, and is safe to run twice: the services re-check state,
and the drain and the rebalancer share one lock so two never move desktops at once.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from desktops.services import desktops_reconcile
from hypervisors.choices import HypervisorState
from hypervisors.fleet import fleet_settings
from hypervisors.models import Hypervisor
from hypervisors.selectors import drain_waiting
from hypervisors.services import (
    NO_DRAIN,
    hypervisor_drain_check,
    hypervisor_drain_step,
    hypervisors_monitor,
    hypervisors_rebalance,
    schedule_after_commit,
)
from isard.exceptions import InfrastructureError

logger = logging.getLogger(__name__)

#: How often a drain looks again while desktops on its host are still shutting down.
DRAIN_RECHECK_SECONDS = 10


@shared_task
def reconcile_all_hypervisors() -> dict[str, int]:
    """Sample every host, then reconcile the desktops of each host that answered.

    A host silent beyond the grace goes offline and its desktops unknown; one that
    answers again gets its desktops' statuses from what it really runs. Returns the
    number of desktops changed per host.
    """
    hypervisors_monitor()
    changes: dict[str, int] = {}
    for hypervisor in Hypervisor.objects.filter(state=HypervisorState.ONLINE):
        if hypervisor.unreachable_since is not None:
            continue
        try:
            changes[hypervisor.name] = desktops_reconcile(hypervisor=hypervisor)
        except InfrastructureError as error:
            logger.warning("reconciling %s failed: %s", hypervisor.name, error.message)
    return changes


@shared_task
def drain_hypervisor(hypervisor_id: int, actor_id: int | None = None) -> dict[str, Any]:
    """One drain step; again later while desktops are still leaving or the lock is busy."""
    result = hypervisor_drain_step(hypervisor_id=hypervisor_id, actor_id=actor_id)
    hypervisor = Hypervisor.objects.filter(pk=hypervisor_id).first()
    if hypervisor is None or hypervisor_drain_check(hypervisor=hypervisor):
        return result.as_dict()
    busy = result.skipped and result.skipped != NO_DRAIN
    if busy or drain_waiting(hypervisor):
        schedule_after_commit(
            "hypervisors.tasks.drain_hypervisor",
            hypervisor_id,
            actor_id,
            countdown=DRAIN_RECHECK_SECONDS,
        )
    return result.as_dict()


@shared_task
def rebalance_hypervisors() -> dict[str, Any]:
    """The beat's rebalancing run (`ISARD_REBALANCE_ENABLED`, `_MAX_MOVES`, `_THRESHOLD`)."""
    if not fleet_settings().rebalance_enabled:
        return {"skipped": "ISARD_REBALANCE_ENABLED is off"}
    return hypervisors_rebalance().as_dict()
