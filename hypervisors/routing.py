"""Which Celery queue a task goes to: the queue of the host whose libvirt it touches.

A hypervisor whose `queue` is blank is served by the central worker on the default queue,
so one machine works with no configuration. A host with its own worker (`celery -A isard
worker -Q hv.lab2` on that host) gets the libvirt work of the desktops placed on it:
define, start, shut down, force off, undefine, and the reconciliation of its domains.

Placement is not host work: it runs wherever the task was first sent (the default queue)
and hands the rest of a start or a provisioning to the chosen host's worker
(`hypervisors.services.hypervisor_hand_off`). Celery calls `route_task` for every task
sent (`task_routes` in `isard/celery.py`); a queue given explicitly by the sender wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.conf import settings

#: Tasks whose first argument is a desktop id and that act on the host it is placed on.
DESKTOP_HOST_TASKS = frozenset(
    {
        "desktops.tasks.shutdown_desktop",
        "desktops.tasks.shutdown_timeout",
        "desktops.tasks.force_off_desktop",
        "desktops.tasks.delete_desktop",
    }
)
#: Tasks whose second argument, when given, is the host already chosen for the desktop.
PLACED_TASKS = frozenset({"desktops.tasks.boot_desktop", "desktops.tasks.provision_desktop"})
#: Tasks whose second argument, when given, is a list of (desktop id, host id) pairs, all on
#: hosts of the same queue.
PLACED_MANY_TASKS = frozenset({"desktops.tasks.provision_desktops"})
#: Tasks whose first argument is a hypervisor id.
HYPERVISOR_TASKS = frozenset({"hypervisors.tasks.reconcile_hypervisor"})


def default_queue() -> str:
    """The queue of the central worker (Celery's `task_default_queue`)."""
    return str(getattr(settings, "CELERY_TASK_DEFAULT_QUEUE", None) or "celery")


def queue_of(queue: str | None) -> str:
    """A hypervisor's queue as stored (blank: the central worker) made a real queue name."""
    return queue or default_queue()


def hypervisor_queue(hypervisor: Any) -> str:
    """The queue whose worker runs `hypervisor`'s libvirt operations."""
    return queue_of(hypervisor.queue)


def _hypervisor_queue_by_id(hypervisor_id: Any) -> str | None:
    from hypervisors.models import Hypervisor

    if not isinstance(hypervisor_id, int):
        return None
    return Hypervisor.objects.filter(pk=hypervisor_id).values_list("queue", flat=True).first()


def _desktop_queue(desktop_id: Any) -> str | None:
    from desktops.models import Desktop

    if not isinstance(desktop_id, int):
        return None
    return (
        Desktop.objects.filter(pk=desktop_id, hypervisor__isnull=False)
        .values_list("hypervisor__queue", flat=True)
        .first()
    )


def _placed_many_queue(pairs: Any) -> str | None:
    if not pairs or not isinstance(pairs, Sequence):
        return None
    first = pairs[0]
    if not isinstance(first, Sequence) or len(first) != 2:
        return None
    return _hypervisor_queue_by_id(first[1])


def task_queue(name: str, args: Sequence[Any] = ()) -> str:
    """The queue for task `name` called with `args`: its host's, else the default one."""
    queue: str | None = None
    if name in DESKTOP_HOST_TASKS and args:
        queue = _desktop_queue(args[0])
    elif name in PLACED_TASKS and len(args) > 1:
        queue = _hypervisor_queue_by_id(args[1])
    elif name in PLACED_MANY_TASKS and len(args) > 1:
        queue = _placed_many_queue(args[1])
    elif name in HYPERVISOR_TASKS and args:
        queue = _hypervisor_queue_by_id(args[0])
    return queue_of(queue)


def route_task(
    name: str,
    args: Sequence[Any] | None,
    kwargs: dict[str, Any] | None,
    options: dict[str, Any],
    task: Any = None,
    **extra: Any,
) -> dict[str, str]:
    """Celery's router hook (`task_routes`): every task sent goes through here."""
    return {"queue": task_queue(name, args or ())}
