"""Rebalancing the fleet: a plan from the pure balancer, carried out under the moves lock."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from desktops.fleet.drain import hypervisor_drain_check
from desktops.fleet.moves import (
    MovesResult,
    desktop_live_migrate,
    move_at_next_start,
    moves_lock_timeout,
)
from desktops.fleet.selectors import (
    fleet_snapshot,
    running_desktops,
)
from desktops.models import Desktop
from hypervisors.choices import (
    HypervisorMode,
    MoveReason,
    MoveStatus,
)
from hypervisors.fleet import LockUnavailableError, fleet_lock, fleet_settings
from hypervisors.models import (
    Hypervisor,
)
from hypervisors.placement import MoveKind as PlannedMoveKind
from hypervisors.placement import (
    plan_rebalance,
    project_moves,
    spread,
)
from isard.core.errors import (
    ApplicationError,
)

if TYPE_CHECKING:
    pass


logger = logging.getLogger(__name__)


def hypervisors_rebalance(
    *, max_moves: int | None = None, threshold: float | None = None
) -> MovesResult:
    """Compute a rebalancing plan and carry it out; at most one run at a time, fleet-wide.

    Drain moves first, then balancing moves while the spread of memory use is at or
    above `threshold`, at most `max_moves` in all (`ISARD_REBALANCE_*`). A desktop on
    shared storage is live-migrated now; any other is left running and started on its
    target next time. If another run (or a drain) holds the lock, this one is skipped.
    """
    config = fleet_settings()
    max_moves = config.rebalance_max_moves if max_moves is None else max_moves
    threshold = config.rebalance_threshold if threshold is None else threshold
    try:
        with fleet_lock("moves", timeout=moves_lock_timeout(max_moves), wait=0):
            result = _rebalance_apply(max_moves=max_moves, threshold=threshold)
    except LockUnavailableError as error:
        return MovesResult(skipped=str(error))
    for hypervisor in Hypervisor.objects.filter(
        mode=HypervisorMode.MAINTENANCE, drain_finished_at__isnull=True
    ):
        hypervisor_drain_check(hypervisor=hypervisor)
    return result


def _rebalance_apply(*, max_moves: int, threshold: float) -> MovesResult:
    snapshot = fleet_snapshot()
    desktops = running_desktops()
    plan = plan_rebalance(snapshot.hosts, desktops, max_moves=max_moves, threshold=threshold)
    result = MovesResult(
        planned=len(plan),
        spread_before=spread(snapshot.hosts),
        spread_after=spread(project_moves(snapshot.hosts, desktops, plan)),
    )
    for move in plan:
        reason = MoveReason(move.reason.value)
        if move.kind == PlannedMoveKind.AT_NEXT_START:
            move_at_next_start(move.desktop_id, move.source_host_id, move.target_host_id, reason)
            result.at_next_start += 1
            continue
        desktop = Desktop.objects.select_related("hypervisor", "disk__pool").get(pk=move.desktop_id)
        try:
            done = desktop_live_migrate(
                desktop=desktop, target=snapshot.hypervisors[move.target_host_id], reason=reason
            )
        except ApplicationError as error:
            result.failed += 1
            result.details.append(f"{desktop.name}: {error.message}")
            continue
        if done.status == MoveStatus.DONE:
            result.migrated += 1
        else:
            result.failed += 1
            result.details.append(f"{desktop.name}: {done.detail}")
    if plan:
        logger.info("rebalance: %s", result.as_dict())
    return result


def hypervisors_rebalance_scheduled() -> dict[str, Any]:
    """The beat's rebalancing run (`ISARD_REBALANCE_ENABLED`, `_MAX_MOVES`, `_THRESHOLD`)."""
    if not fleet_settings().rebalance_enabled:
        return {"skipped": "ISARD_REBALANCE_ENABLED is off"}
    return hypervisors_rebalance().as_dict()
