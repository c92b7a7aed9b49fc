"""Periodic and on-demand tasks of the fleet: monitoring, reconciliation, drains, rebalancing.

Each takes ids, calls services, and is safe to run twice: the services re-check state,
and the drain and the rebalancer share one lock so two never move desktops at once.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from celery import Task, shared_task

from desktops.services import desktops_reconcile
from hypervisors.choices import HypervisorState
from hypervisors.fleet import fleet_settings
from hypervisors.models import Hypervisor
from hypervisors.routing import default_queue, hypervisor_queue
from hypervisors.selectors import drain_waiting
from hypervisors.services import (
    NO_DRAIN,
    host_check_local,
    hypervisor_drain_check,
    hypervisor_drain_step,
    hypervisors_monitor,
    hypervisors_rebalance,
    schedule_after_commit,
)
from isard.core.errors import InfrastructureError

logger = logging.getLogger(__name__)

#: How often a drain looks again while desktops on its host are still shutting down.
DRAIN_RECHECK_SECONDS = 10


#: A reconciliation sent to a host's own worker that has not started by then is dropped:
#: the next beat sends a fresh one, so a host whose worker is down does not pile them up.
RECONCILE_EXPIRES_SECONDS = 30


@shared_task
def reconcile_all_hypervisors() -> dict[str, int]:
    """Sample every host, then reconcile the desktops of each host that answered.

    A host silent beyond the grace goes offline and its desktops unknown; one that
    answers again gets its desktops' statuses from what it really runs. The sampling
    stays here, on the central worker: a host that is down cannot report its own
    silence. The reconciliation of a host with its own worker runs on that worker.
    Returns the number of desktops changed per host reconciled here.
    """
    hypervisors_monitor()
    changes: dict[str, int] = {}
    for hypervisor in Hypervisor.objects.filter(
        state=HypervisorState.ONLINE, unreachable_since__isnull=True
    ):
        if hypervisor_queue(hypervisor) != default_queue():
            schedule_after_commit(
                "hypervisors.tasks.reconcile_hypervisor",
                hypervisor.pk,
                expires=RECONCILE_EXPIRES_SECONDS,
            )
            continue
        try:
            changes[hypervisor.name] = desktops_reconcile(hypervisor=hypervisor)
        except InfrastructureError as error:
            logger.warning("reconciling %s failed: %s", hypervisor.name, error.message)
    return changes


@shared_task
def reconcile_hypervisor(hypervisor_id: int) -> int:
    """Reconcile one host's desktops with what it runs (on the host's own worker)."""
    hypervisor = Hypervisor.objects.filter(pk=hypervisor_id).first()
    if hypervisor is None or hypervisor.state != HypervisorState.ONLINE:
        return 0
    try:
        return desktops_reconcile(hypervisor=hypervisor)
    except InfrastructureError as error:
        # The central monitor decides whether the host is gone; the next beat retries.
        logger.warning("reconciling %s failed: %s", hypervisor.name, error.message)
        return 0


@shared_task(bind=True)
def check_host(self: Task, uri: str, pool_paths: list[str]) -> dict[str, Any]:
    """What the worker that takes this task sees: its libvirt and the storage pools.

    Sent to a host's queue by `hypervisor_check` (`manage.py isard_hypervisor check`),
    it proves that a worker consumes that queue, that it reaches the host's libvirt at
    `uri` and that it can write in every pool the host is said to reach. It takes what
    it checks as arguments rather than ids: the answer must not depend on the database
    the worker was pointed at.
    """
    delivery = self.request.delivery_info or {}
    return {
        "worker": self.request.hostname or socket.gethostname(),
        "queue": delivery.get("routing_key") or "",
        **host_check_local(uri=uri, pool_paths=pool_paths),
    }


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
