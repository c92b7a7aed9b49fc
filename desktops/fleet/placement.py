"""Where a desktop runs: the fleet's pure balancer (`hypervisors.placement`) wired to the
database, under a fleet-wide lock, with each start charged to its host until the host's
next sample shows it; and the hand-off of the libvirt work to the chosen host's worker."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.db import transaction
from django.utils import timezone

from desktops.choices import DesktopStatus
from desktops.fleet.selectors import (
    FleetSnapshot,
    RuleBook,
    fleet_snapshot,
    pending_next_start_targets,
)
from desktops.models import Desktop
from hypervisors.choices import (
    MoveKind,
    MoveStatus,
)
from hypervisors.fleet import LockUnavailableError, fleet_lock
from hypervisors.models import (
    DesktopMove,
    Disk,
    Hypervisor,
    PlacementCharge,
    StoragePool,
)
from hypervisors.placement import (
    DesktopRequest,
    FleetState,
    Placement,
    Policy,
    place,
)
from hypervisors.routing import default_queue, hypervisor_queue
from isard.core.errors import (
    ApplicationError,
    NoCapacityError,
)

if TYPE_CHECKING:
    from accounts.models import Course


from accounts.models import Course
from isard.core.tasks import TaskCall, send_after_commit

logger = logging.getLogger(__name__)


def hypervisor_hand_off(*, hypervisor: Hypervisor, call: TaskCall) -> bool:
    """Leave the rest of a desktop's start or provisioning to the chosen host's own worker.

    Placement runs on the central worker (the default queue); the libvirt work must run
    where the host's worker is. If the host has a queue of its own, `call` (the task of
    the second step, naming the host) is sent there after commit and True is returned:
    the caller stops. A host served by the central worker: False, the caller carries on
    in the same task.
    """
    if hypervisor_queue(hypervisor) == default_queue():
        return False
    send_after_commit(call)
    return True


def hypervisors_hand_off_many(
    placements: Mapping[int, Hypervisor | ApplicationError],
    call_for: Callable[[Sequence[tuple[int, Hypervisor]]], TaskCall],
) -> set[int]:
    """`hypervisor_hand_off` for a class: one task per queue with its (desktop, host) pairs.

    Returns the desktops handed off; the caller goes on with the others.
    """
    groups: dict[str, list[tuple[int, Hypervisor]]] = {}
    for desktop_id, placed in placements.items():
        if isinstance(placed, Hypervisor) and hypervisor_queue(placed) != default_queue():
            groups.setdefault(hypervisor_queue(placed), []).append((desktop_id, placed))
    for pairs in groups.values():
        send_after_commit(call_for(pairs))
    return {desktop_id for pairs in groups.values() for desktop_id, _host in pairs}


#: Charges are kept this long after they stop counting: the latest one is the round-robin
#: cursor, which must survive a quiet hour.
CHARGE_RETENTION = timedelta(days=1)


_POOL_ID = re.compile(r"\bpool (\d+)\b")


def _placement_lock() -> ExitStack:
    """The fleet-wide placement lock, or none if Redis cannot give it.

    Placing is a read-decide-charge; two workers doing it at once could both pick the
    host that had the most room. The lock costs a few milliseconds per start. Without
    Redis the start still goes ahead (it must never hang on the balancer); the worst case
    is two desktops on the same host.
    """
    stack = ExitStack()
    try:
        stack.enter_context(fleet_lock("placement", timeout=30, wait=10))
    except LockUnavailableError as error:
        logger.warning("placing without the fleet lock: %s", error)
    return stack


def _refusal(placement: Placement, snapshot: FleetSnapshot, *, forced: bool) -> str:
    """The balancer's reason as a user reads it: pools by name, a sentence."""
    reason = _POOL_ID.sub(
        lambda match: f"pool “{snapshot.pool_names.get(int(match[1]), match[1])}”",
        placement.reason,
    )
    if not forced and not any(host.takes_new_desktops for host in snapshot.hosts):
        headline = (
            "No hypervisor is online"
            if not any(host.online for host in snapshot.hosts)
            else "No hypervisor accepts new desktops now"
        )
        return f"{headline}: ask an administrator to check the hypervisors page ({reason})."
    return f"{reason[:1].upper()}{reason[1:]}."


def _pool_id(desktop: Desktop | None, storage_pool: StoragePool | None) -> int | None:
    if storage_pool is not None:
        return storage_pool.pk
    if desktop is not None and desktop.disk_id is not None:
        return Disk.objects.filter(pk=desktop.disk_id).values_list("pool_id", flat=True).first()
    return None


def hypervisor_place(
    *,
    memory_mib: int,
    vcpus: int,
    course: Course | None = None,
    desktop: Desktop | None = None,
    storage_pool: StoragePool | None = None,
    charge: bool = True,
) -> Hypervisor:
    """Choose the host a desktop starts on, and charge the start to it until its next sample.

    The policy is the desktop's or its course's placement rule, else
    `ISARD_PLACEMENT_POLICY`; a forced host, a favourite host and required tags come from
    the same rules, and a move the rebalancer planned for the desktop's next start counts
    as its favourite. Hard constraints: online, enabled, the desktop's storage pool
    (`storage_pool`, else its disk's), tags, memory and vCPUs with overcommit.

    Raises NoCapacityError with the balancer's reason ("No hypervisor with 4096 MiB and 2
    vCPUs free in pool “desktops”: ..."), at once: a start never waits for room. With
    `charge=False` (defining a domain that does not run yet) nothing is written.
    """
    desktop_id = desktop.pk if desktop is not None else None
    course_id = course.pk if course is not None else None
    if course_id is None and desktop is not None:
        course_id = desktop.course_id
    rules = RuleBook(
        desktop_ids=[desktop_id] if desktop_id else [],
        course_ids=[course_id] if course_id else [],
    )
    rule = rules.effective(desktop_id=desktop_id, course_id=course_id)
    favourite = rule.favourite_hypervisor_id
    planned_target: int | None = None
    if desktop_id is not None and rule.forced_hypervisor_id is None and favourite is None:
        planned_target = pending_next_start_targets(desktop_ids=[desktop_id]).get(desktop_id)
        favourite = planned_target
    request = DesktopRequest(
        memory_mib=memory_mib,
        vcpus=vcpus,
        required_tags=rule.required_tags,
        storage_pool=_pool_id(desktop, storage_pool),
        forced_host=rule.forced_hypervisor_id,
        favourite_host=favourite,
    )
    # Lock, then transaction: the charge is committed before the next worker decides. A
    # decision that charges nothing (defining a domain that does not run yet) writes
    # nothing another worker could race with, so it needs neither.
    guard = ExitStack()
    if charge:
        guard.enter_context(_placement_lock())
        guard.enter_context(transaction.atomic())
    with guard:
        now = timezone.now()
        snapshot = fleet_snapshot(now=now, exclude_desktop_ids=[desktop_id] if desktop_id else [])
        placement = place(
            request,
            snapshot.hosts,
            Policy(rule.policy),
            round_robin_cursor=snapshot.round_robin_cursor,
        )
        if placement.host_id is None:
            raise NoCapacityError(
                _refusal(placement, snapshot, forced=rule.forced_hypervisor_id is not None),
                extra={"memory_mib": memory_mib, "vcpus": vcpus},
            )
        if charge:
            PlacementCharge.objects.create(
                hypervisor_id=placement.host_id,
                desktop_id=desktop_id,
                memory_mib=memory_mib,
                vcpus=vcpus,
                created_at=now,
            )
            PlacementCharge.objects.filter(created_at__lt=now - CHARGE_RETENTION).delete()
        if charge and planned_target is not None and desktop_id is not None:
            _next_start_moves_settle(desktop_id, placement.host_id, now=now)
    logger.debug("desktop %s: %s", desktop_id, placement.reason)
    return snapshot.hypervisors[placement.host_id]


def hypervisors_place_many(
    *,
    desktops: Sequence[Desktop],
    storage_pool: StoragePool | None = None,
    charge: bool = False,
) -> dict[int, Hypervisor | NoCapacityError]:
    """Place a whole class in one decision pass: each desktop sees the ones before it.

    For each desktop (its `hardware` loaded), the host or the NoCapacityError saying why
    none fits. One snapshot, one lock; each placement charges the working copy of the
    fleet, so 30 desktops spread (or pack) as if started one after another. With `charge`
    (the desktops are starting) the charges are also stored and planned moves settled, as
    `hypervisor_place` does for one start; without, nothing is written.
    """
    desktop_ids = [desktop.pk for desktop in desktops]
    rules = RuleBook(
        desktop_ids=desktop_ids,
        course_ids={desktop.course_id for desktop in desktops if desktop.course_id},
    )
    planned = pending_next_start_targets(desktop_ids=desktop_ids)
    pool_ids = dict(
        Disk.objects.filter(desktops__in=desktop_ids).values_list("desktops__pk", "pool_id")
    )
    results: dict[int, Hypervisor | NoCapacityError] = {}
    with _placement_lock(), transaction.atomic():
        now = timezone.now()
        snapshot = fleet_snapshot(now=now, exclude_desktop_ids=desktop_ids)
        fleet = FleetState(snapshot.hosts, round_robin_cursor=snapshot.round_robin_cursor)
        charges: list[PlacementCharge] = []
        for desktop in desktops:
            rule = rules.effective(desktop_id=desktop.pk, course_id=desktop.course_id)
            favourite = rule.favourite_hypervisor_id
            if rule.forced_hypervisor_id is None and favourite is None:
                favourite = planned.get(desktop.pk)
            request = DesktopRequest(
                memory_mib=desktop.hardware.memory_mib,
                vcpus=desktop.hardware.vcpus,
                required_tags=rule.required_tags,
                storage_pool=pool_ids.get(desktop.pk, storage_pool.pk if storage_pool else None),
                forced_host=rule.forced_hypervisor_id,
                favourite_host=favourite,
            )
            placement = fleet.place(request, Policy(rule.policy))
            if placement.host_id is None:
                results[desktop.pk] = NoCapacityError(
                    _refusal(placement, snapshot, forced=rule.forced_hypervisor_id is not None)
                )
                continue
            results[desktop.pk] = snapshot.hypervisors[placement.host_id]
            charges.append(
                PlacementCharge(
                    hypervisor_id=placement.host_id,
                    desktop_id=desktop.pk,
                    memory_mib=request.memory_mib,
                    vcpus=request.vcpus,
                    created_at=now,
                )
            )
            if charge and desktop.pk in planned:
                _next_start_moves_settle(desktop.pk, placement.host_id, now=now)
        if charge:
            PlacementCharge.objects.bulk_create(charges)
    return results


def _next_start_moves_settle(desktop_id: int, host_id: int, *, now: datetime) -> None:
    """The desktop was placed: its planned move at next start is done, or overtaken."""
    pending = DesktopMove.objects.filter(
        desktop_id=desktop_id, kind=MoveKind.AT_NEXT_START, status=MoveStatus.PENDING
    )
    pending.filter(target_id=host_id).update(status=MoveStatus.DONE, finished_at=now)
    pending.exclude(target_id=host_id).update(
        status=MoveStatus.CANCELLED,
        finished_at=now,
        detail="its target could not take it at its start; placed by policy",
    )


S = DesktopStatus


def choose_hypervisor(
    *,
    memory_mib: int,
    vcpus: int = 1,
    desktop: Desktop | None = None,
    storage_pool: StoragePool | None = None,
    charge: bool = True,
) -> Hypervisor:
    """Where a desktop runs: the fleet's policy and constraints, starts in flight counted.

    See `hypervisors.services.hypervisor_place`; raises NoCapacityError with the reason.
    """
    return hypervisor_place(
        memory_mib=memory_mib,
        vcpus=vcpus,
        desktop=desktop,
        storage_pool=storage_pool,
        charge=charge,
    )


def host_to_define_on(
    desktop: Desktop, pool: StoragePool, refusal: NoCapacityError | None = None
) -> Hypervisor:
    """A host to define (not start) a desktop on: where it would start, else any that may.

    A definition takes no memory, so a fleet busy running this hour's class must not
    refuse to create next hour's desktops: when no host has room for the desktop now,
    the same balancer is asked for a host with no size at all, keeping every hard
    constraint (enabled, online, storage pool, tags, forced host). The start places the
    desktop again, with its real size.
    """
    if refusal is None:
        try:
            return choose_hypervisor(
                memory_mib=desktop.hardware.memory_mib,
                vcpus=desktop.hardware.vcpus,
                desktop=desktop,
                storage_pool=pool,
                charge=False,
            )
        except NoCapacityError:
            pass
    return choose_hypervisor(
        memory_mib=0, vcpus=0, desktop=desktop, storage_pool=pool, charge=False
    )
