"""Periodic tasks that keep the database equal to what the hypervisors really run."""

from __future__ import annotations

import logging

from celery import shared_task

from desktops.services import desktops_reconcile
from hypervisors.choices import HypervisorState
from hypervisors.models import Hypervisor
from hypervisors.services import hypervisor_refresh
from isard.exceptions import InfrastructureError

logger = logging.getLogger(__name__)


@shared_task
def reconcile_all_hypervisors() -> dict[str, int]:
    """Refresh each host's stats and reconcile its desktops; returns changes per host."""
    changes: dict[str, int] = {}
    for hypervisor in Hypervisor.objects.all():
        hypervisor = hypervisor_refresh(hypervisor=hypervisor)
        if hypervisor.state != HypervisorState.ONLINE:
            continue
        try:
            changes[hypervisor.name] = desktops_reconcile(hypervisor=hypervisor)
        except InfrastructureError as error:
            logger.warning("reconciling %s failed: %s", hypervisor.name, error.message)
    return changes
