"""Tasks of the hosts themselves: a host's own worker proving what it sees.

Everything that acts on desktops (monitoring, reconciliation, drains, rebalancing) lives
with the desktops (`desktops.tasks`).
"""

from __future__ import annotations

import socket
from typing import Any

from celery import Task, shared_task

from hypervisors import task_calls
from hypervisors.services.hosts import host_check_local


@shared_task(bind=True, name=task_calls.CHECK_HOST)
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
