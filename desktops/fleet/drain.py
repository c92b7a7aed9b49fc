"""Draining a host for maintenance: live-migrate or shut down every desktop on it."""

from __future__ import annotations

import logging
import math
from typing import Any

from django.db import transaction
from django.utils import timezone

from accounts.models import User
from desktops import task_calls
from desktops.choices import DesktopStatus
from desktops.fleet.moves import MovesResult, desktop_live_migrate, moves_lock_timeout
from desktops.fleet.selectors import (
    booked_desktops_on,
    drain_waiting,
    fleet_snapshot,
    running_desktops,
)
from desktops.models import Desktop
from desktops.services.lifecycle import desktop_shutdown
from hypervisors.choices import (
    DrainPolicy,
    HypervisorMode,
    MoveKind,
    MoveReason,
    MoveStatus,
)
from hypervisors.fleet import LockUnavailableError, fleet_lock, fleet_settings
from hypervisors.models import (
    DesktopMove,
    Hypervisor,
    HypervisorEvent,
)
from hypervisors.placement import MoveKind as PlannedMoveKind
from hypervisors.placement import (
    plan_rebalance,
)
from hypervisors.services.hosts import check_fleet_admin
from isard.core.errors import (
    ApplicationError,
    ConflictError,
)
from isard.core.tasks import send_after_commit

logger = logging.getLogger(__name__)


def _shut_down_for_drain(
    desktop_id: int, hypervisor: Hypervisor, actor: User | None
) -> DesktopMove | None:
    desktop = Desktop.objects.select_related("owner").get(pk=desktop_id)
    if desktop.status != DesktopStatus.STARTED or desktop.hypervisor_id != hypervisor.pk:
        return None
    move = DesktopMove(
        desktop=desktop, source=hypervisor, kind=MoveKind.STOP, reason=MoveReason.DRAIN
    )
    try:
        # The owner may always shut their own desktop down; the drain acts for the admin.
        desktop_shutdown(actor=actor or desktop.owner, desktop=desktop)
    except ApplicationError as error:
        move.status, move.detail = MoveStatus.FAILED, error.message
    else:
        move.status, move.detail = MoveStatus.DONE, "shut down (forced off after the timeout)"
    move.finished_at = timezone.now()
    move.save()
    return move


def hypervisor_drain(
    *, actor: User, hypervisor: Hypervisor, policy: DrainPolicy | None = None
) -> Hypervisor:
    """Put a host in maintenance and empty it: live-migrate or shut down its desktops.

    Nothing new starts there from now on. A task does the moves (`hypervisor_drain_step`)
    and follows them until no desktop is left; `selectors.drain_progress` says how far it
    got. Draining a host already draining only changes the policy and runs a step again.
    """
    check_fleet_admin(actor)
    policy = DrainPolicy(policy or fleet_settings().drain_policy)
    now = timezone.now()
    with transaction.atomic():
        draining = (
            hypervisor.mode == HypervisorMode.MAINTENANCE
            and hypervisor.drain_started_at is not None
            and hypervisor.drain_finished_at is None
        )
        total = booked_desktops_on(hypervisor)
        if draining:
            Hypervisor.objects.filter(pk=hypervisor.pk).update(drain_policy=policy)
            message = f"drain policy changed to “{policy.label}”"
        else:
            updated = Hypervisor.objects.filter(pk=hypervisor.pk, mode=hypervisor.mode).update(
                mode=HypervisorMode.MAINTENANCE,
                drain_policy=policy,
                drain_started_at=now,
                drain_finished_at=None,
                drain_total=total,
            )
            if not updated:
                raise ConflictError(f"The hypervisor {hypervisor.name} changed meanwhile.")
            message = f"maintenance: drain started ({policy.label}), {total} desktops on it"
        HypervisorEvent.objects.create(hypervisor=hypervisor, message=message, actor=actor)
        send_after_commit(
            task_calls.drain_hypervisor(hypervisor_id=hypervisor.pk, actor_id=actor.pk)
        )
    hypervisor.refresh_from_db()
    return hypervisor


NO_DRAIN = "no drain in progress"


def hypervisor_drain_step(*, hypervisor_id: int, actor_id: int | None = None) -> MovesResult:
    """Move what can leave the draining host now, then check whether it is empty.

    Holds the moves lock (the rebalancer's), so a drain and a rebalancing never move
    desktops at the same time. Returns `skipped` when there is nothing to do or the lock
    is busy; the task then tries again later.
    """
    hypervisor = Hypervisor.objects.get(pk=hypervisor_id)
    if (
        hypervisor.mode != HypervisorMode.MAINTENANCE
        or hypervisor.drain_started_at is None
        or hypervisor.drain_finished_at is not None
    ):
        return MovesResult(skipped=NO_DRAIN)
    actor = User.objects.filter(pk=actor_id).first() if actor_id else None
    on_host = booked_desktops_on(hypervisor)
    try:
        with fleet_lock("moves", timeout=moves_lock_timeout(on_host), wait=0):
            result = _drain_apply(hypervisor, actor)
    except LockUnavailableError as error:
        return MovesResult(skipped=str(error))
    hypervisor_drain_check(hypervisor=hypervisor)
    return result


def _drain_apply(hypervisor: Hypervisor, actor: User | None) -> MovesResult:
    policy = DrainPolicy(hypervisor.drain_policy or fleet_settings().drain_policy)
    result = MovesResult()
    leaving = [desktop.id for desktop in running_desktops(hypervisor_ids=[hypervisor.pk])]
    to_stop: list[int] = []
    if policy == DrainPolicy.STOP:
        to_stop = leaving
    else:
        snapshot = fleet_snapshot()
        everyone = running_desktops()
        # An infinite threshold: only the drain half of the plan, no balancing moves.
        plan = plan_rebalance(
            snapshot.hosts, everyone, max_moves=max(len(everyone), 1), threshold=math.inf
        )
        moves = [move for move in plan if move.source_host_id == hypervisor.pk]
        result.planned = len(moves)
        planned = {move.desktop_id for move in moves}
        for move in moves:
            desktop = Desktop.objects.select_related("hypervisor", "disk__pool").get(
                pk=move.desktop_id
            )
            if move.kind == PlannedMoveKind.LIVE_MIGRATION:
                try:
                    done = desktop_live_migrate(
                        desktop=desktop,
                        target=snapshot.hypervisors[move.target_host_id],
                        reason=MoveReason.DRAIN,
                        actor=actor,
                    )
                except ApplicationError as error:
                    result.details.append(f"{desktop.name}: {error.message}")
                    result.failed += 1
                    continue
                if done.status == MoveStatus.DONE:
                    result.migrated += 1
                    continue
                result.failed += 1
                result.details.append(f"{desktop.name}: {done.detail}")
            if policy == DrainPolicy.MIGRATE_OR_STOP:
                to_stop.append(move.desktop_id)
        if policy == DrainPolicy.MIGRATE_OR_STOP:
            # What no host can take now.
            to_stop += [desktop_id for desktop_id in leaving if desktop_id not in planned]
    for desktop_id in to_stop:
        stop = _shut_down_for_drain(desktop_id, hypervisor, actor)
        if stop is not None and stop.status == MoveStatus.DONE:
            result.stopped += 1
        elif stop is not None:
            result.failed += 1
    if result.migrated or result.stopped or result.failed:
        HypervisorEvent.objects.create(
            hypervisor=hypervisor,
            message=f"drain: {result.migrated} migrated, {result.stopped} shutting down, "
            f"{result.failed} failed"
            + (f" ({'; '.join(result.details[:5])})" if result.details else ""),
            actor=actor,
        )
    return result


def hypervisor_drain_check(*, hypervisor: Hypervisor) -> bool:
    """Finish the host's drain if no desktop is left on it; True if it is finished."""
    hypervisor.refresh_from_db()
    if hypervisor.drain_started_at is None or hypervisor.drain_finished_at is not None:
        return hypervisor.drain_finished_at is not None
    if hypervisor.mode != HypervisorMode.MAINTENANCE or booked_desktops_on(hypervisor):
        return False
    finished = Hypervisor.objects.filter(pk=hypervisor.pk, drain_finished_at__isnull=True).update(
        drain_finished_at=timezone.now()
    )
    if finished:
        HypervisorEvent.objects.create(
            hypervisor=hypervisor, message="drain finished: no desktop runs here"
        )
    hypervisor.refresh_from_db()
    return True


#: How often a drain looks again while desktops on its host are still shutting down.
DRAIN_RECHECK_SECONDS = 10


def hypervisor_drain_continue(*, hypervisor_id: int, actor_id: int | None) -> dict[str, Any]:
    """One drain step; sent again later while desktops are still leaving or the lock is busy."""
    result = hypervisor_drain_step(hypervisor_id=hypervisor_id, actor_id=actor_id)
    hypervisor = Hypervisor.objects.filter(pk=hypervisor_id).first()
    if hypervisor is None or hypervisor_drain_check(hypervisor=hypervisor):
        return result.as_dict()
    busy = result.skipped and result.skipped != NO_DRAIN
    if busy or drain_waiting(hypervisor):
        send_after_commit(
            task_calls.drain_hypervisor(
                hypervisor_id=hypervisor_id, actor_id=actor_id, countdown=DRAIN_RECHECK_SECONDS
            )
        )
    return result.as_dict()
