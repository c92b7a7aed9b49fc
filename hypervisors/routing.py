"""Which Celery queue a task goes to: the queue of the host whose libvirt it touches.

A hypervisor whose `queue` is blank is served by the central worker on the default queue,
so one machine works with no configuration. A host with its own worker (`celery -A isard
worker -Q hv.lab2` on that host) gets the libvirt work of the desktops placed on it:
define, start, shut down, force off, undefine, and the reconciliation of its domains.

Placement is not host work: it runs on the central worker (the default queue) and hands
the rest of a start or a provisioning to the chosen host's worker
(`desktops.fleet.placement.hypervisor_hand_off`). The typed task calls that name a host
(`desktops.task_calls`) put that host's queue in the call's options, so a retry or a
countdown stays on it; no router has to guess a queue from a task's arguments.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings


def default_queue() -> str:
    """The queue of the central worker (Celery's `task_default_queue`)."""
    return str(getattr(settings, "CELERY_TASK_DEFAULT_QUEUE", None) or "celery")


def queue_of(queue: str | None) -> str:
    """A hypervisor's queue as stored (blank: the central worker) made a real queue name."""
    return queue or default_queue()


def hypervisor_queue(hypervisor: Any) -> str:
    """The queue whose worker runs `hypervisor`'s libvirt operations."""
    return queue_of(hypervisor.queue)
