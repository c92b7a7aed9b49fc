"""The desktops' tasks as typed calls: each task's name is spelled here and only here.

`desktops.tasks` registers each task under the name given here; services build a call
with one of these functions and send it with `isard.core.tasks.send_after_commit`.

Queues: work that touches one host's libvirt goes to that host's queue (its own worker,
or the central one when the host has no queue: `hypervisors.routing`); the builder that
names a host sets the queue, so retries and countdowns stay there. Placement, monitoring,
drains and rebalancing run on the central (default) queue.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hypervisors.routing import hypervisor_queue
from isard.core.task_call import TaskCall

if TYPE_CHECKING:  # for the hints only: the Celery app reads the names before models load
    from hypervisors.models import Hypervisor

CREATE_DESKTOP = "desktops.tasks.create_desktop"
PROVISION_DESKTOP = "desktops.tasks.provision_desktop"
CREATE_DESKTOPS = "desktops.tasks.create_desktops"
PROVISION_DESKTOPS = "desktops.tasks.provision_desktops"
START_DESKTOP = "desktops.tasks.start_desktop"
BOOT_DESKTOP = "desktops.tasks.boot_desktop"
SHUTDOWN_DESKTOP = "desktops.tasks.shutdown_desktop"
SHUTDOWN_TIMEOUT = "desktops.tasks.shutdown_timeout"
FORCE_OFF_DESKTOP = "desktops.tasks.force_off_desktop"
DELETE_DESKTOP = "desktops.tasks.delete_desktop"
MAKE_TEMPLATE = "desktops.tasks.make_template"
RENEW_DESKTOP = "desktops.tasks.renew_desktop"
RENEW_VOLATILE = "desktops.tasks.renew_volatile"
ENFORCE_TIME_LIMITS = "desktops.tasks.enforce_time_limits"
SHUT_DOWN_IDLE = "desktops.tasks.shut_down_idle"
RECOVER_STUCK_DESKTOPS = "desktops.tasks.recover_stuck_desktops"
PURGE_RECYCLE_BIN = "desktops.tasks.purge_recycle_bin"
PURGE_VIEWER_TOKENS = "desktops.tasks.purge_viewer_tokens"
SUM_USAGE = "desktops.tasks.sum_usage"
REFILL_POOL = "desktops.tasks.refill_pool"
REFILL_POOLS = "desktops.tasks.refill_pools"
RECONCILE_ALL_HYPERVISORS = "desktops.tasks.reconcile_all_hypervisors"
RECONCILE_HYPERVISOR = "desktops.tasks.reconcile_hypervisor"
DRAIN_HYPERVISOR = "desktops.tasks.drain_hypervisor"
REBALANCE_HYPERVISORS = "desktops.tasks.rebalance_hypervisors"


def _on(hypervisor: Hypervisor | None, **options: Any) -> dict[str, Any]:
    """Celery options sending a task to `hypervisor`'s queue (none: the default queue)."""
    if hypervisor is not None:
        options["queue"] = hypervisor_queue(hypervisor)
    return options


def create_desktop(*, desktop_id: int) -> TaskCall:
    """Place a new desktop, then make its disk and domain there."""
    return TaskCall(CREATE_DESKTOP, {"desktop_id": desktop_id})


def provision_desktop(*, desktop_id: int, hypervisor: Hypervisor) -> TaskCall:
    """Make a placed desktop's disk and domain, on its host's worker."""
    return TaskCall(
        PROVISION_DESKTOP,
        {"desktop_id": desktop_id, "hypervisor_id": hypervisor.pk},
        _on(hypervisor),
    )


def create_desktops(*, desktop_ids: Sequence[int]) -> TaskCall:
    """Place a whole class, then make the disks and domains, host by host."""
    return TaskCall(CREATE_DESKTOPS, {"desktop_ids": list(desktop_ids)})


def provision_desktops(*, placed_on: Sequence[tuple[int, Hypervisor]]) -> TaskCall:
    """Make the disks and domains of placed desktops, on their hosts' worker.

    `placed_on` pairs each desktop id with its host; the hosts share one queue.
    """
    queues = {hypervisor_queue(host) for _desktop_id, host in placed_on}
    if len(queues) != 1:
        raise ValueError(f"one queue per call, not {sorted(queues)}")
    return TaskCall(
        PROVISION_DESKTOPS,
        {"placed_on": [[desktop_id, host.pk] for desktop_id, host in placed_on]},
        {"queue": queues.pop()},
    )


def start_desktop(*, desktop_id: int) -> TaskCall:
    """Place a starting desktop, then boot it there."""
    return TaskCall(START_DESKTOP, {"desktop_id": desktop_id})


def boot_desktop(*, desktop_id: int, hypervisor: Hypervisor) -> TaskCall:
    """(Re)define and start a placed desktop's domain, on its host's worker."""
    return TaskCall(
        BOOT_DESKTOP, {"desktop_id": desktop_id, "hypervisor_id": hypervisor.pk}, _on(hypervisor)
    )


def shutdown_desktop(
    *, desktop_id: int, hypervisor: Hypervisor | None, countdown: float | None = None
) -> TaskCall:
    options = _on(hypervisor, **({"countdown": countdown} if countdown else {}))
    return TaskCall(SHUTDOWN_DESKTOP, {"desktop_id": desktop_id}, options)


def shutdown_timeout(
    *, desktop_id: int, hypervisor: Hypervisor | None, countdown: float
) -> TaskCall:
    """Force the guest off if it is still shutting down after `countdown` seconds."""
    return TaskCall(
        SHUTDOWN_TIMEOUT, {"desktop_id": desktop_id}, _on(hypervisor, countdown=countdown)
    )


def force_off_desktop(
    *, desktop_id: int, hypervisor: Hypervisor | None, countdown: float | None = None
) -> TaskCall:
    options = _on(hypervisor, **({"countdown": countdown} if countdown else {}))
    return TaskCall(FORCE_OFF_DESKTOP, {"desktop_id": desktop_id}, options)


def delete_desktop(*, desktop_id: int, hypervisor: Hypervisor | None) -> TaskCall:
    """Undefine the domain (the disk goes to the recycle bin)."""
    return TaskCall(DELETE_DESKTOP, {"desktop_id": desktop_id}, _on(hypervisor))


def make_template(*, template_id: int, desktop_id: int) -> TaskCall:
    return TaskCall(MAKE_TEMPLATE, {"template_id": template_id, "desktop_id": desktop_id})


def renew_desktop(
    *, desktop_id: int, hypervisor: Hypervisor | None, put_back: int | None = None
) -> TaskCall:
    """Give a RESETTING desktop a fresh disk on its template (or put back an earlier one),
    on its host's worker (it asks libvirt that the guest is off first)."""
    return TaskCall(
        RENEW_DESKTOP, {"desktop_id": desktop_id, "put_back": put_back}, _on(hypervisor)
    )


def renew_volatile(*, desktop_ids: Sequence[int]) -> TaskCall:
    """Volatile desktops that just stopped go back to their template (central worker)."""
    return TaskCall(RENEW_VOLATILE, {"desktop_ids": list(desktop_ids)})


def reconcile_hypervisor(*, hypervisor: Hypervisor, expires: float) -> TaskCall:
    """Compare a host's desktops with what it runs, on the host's own worker."""
    return TaskCall(
        RECONCILE_HYPERVISOR, {"hypervisor_id": hypervisor.pk}, _on(hypervisor, expires=expires)
    )


def drain_hypervisor(
    *, hypervisor_id: int, actor_id: int | None, countdown: float | None = None
) -> TaskCall:
    """One drain step, on the central worker (it places and migrates)."""
    return TaskCall(
        DRAIN_HYPERVISOR,
        {"hypervisor_id": hypervisor_id, "actor_id": actor_id},
        {"countdown": countdown} if countdown else {},
    )


def refill_pool(*, pool_id: int) -> TaskCall:
    """Make and start a pool's free desktops up to its sizes, on the central worker."""
    return TaskCall(REFILL_POOL, {"pool_id": pool_id})
