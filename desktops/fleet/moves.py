"""Moving desktops between hosts: live migration now, or a move at the next start."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.utils import timezone

from desktops.choices import DesktopStatus
from desktops.fleet.monitoring import hypervisor_refresh
from desktops.models import Desktop
from desktops.services.reconciliation import desktop_sync_state
from desktops.services.transitions import desktop_event_record
from hypervisors.choices import (
    MoveKind,
    MoveReason,
    MoveStatus,
)
from hypervisors.drivers import libvirt_driver
from hypervisors.fleet import fleet_settings
from hypervisors.models import (
    DesktopMove,
    Hypervisor,
)
from isard.core.errors import (
    ConflictError,
)

if TYPE_CHECKING:
    from accounts.models import User


logger = logging.getLogger(__name__)


def desktop_live_migrate(
    *,
    desktop: Desktop,
    target: Hypervisor,
    reason: MoveReason,
    actor: User | None = None,
) -> DesktopMove:
    """Move a started desktop's running guest to `target` without stopping it.

    The move row is committed first, then libvirt migrates (seconds; no transaction is
    open), then the desktop's host changes with a conditional update and an event row.
    On failure the guest goes on running where it was and the move says why.

    While the guest leaves, its old host reports it gone; the lifecycle listener or the
    reconciler may act on that before the desktop's host is updated, and mark it stopped
    or failed. So once the host is updated, the guest's real state on the target is
    applied again.
    """
    desktop.refresh_from_db()
    source = desktop.hypervisor
    if desktop.status != DesktopStatus.STARTED or source is None:
        raise ConflictError(f"The desktop “{desktop.name}” is not running; it cannot migrate.")
    if source.pk == target.pk:
        raise ConflictError(f"The desktop “{desktop.name}” already runs on {target.name}.")
    pool = desktop.disk.pool if desktop.disk is not None else None
    move = DesktopMove.objects.create(
        desktop=desktop,
        source=source,
        target=target,
        kind=MoveKind.LIVE_MIGRATION,
        reason=reason,
        status=MoveStatus.RUNNING,
    )
    started = time.monotonic()
    try:
        libvirt_driver.migrate_domain(
            source.uri,
            target.uri,
            desktop.domain_name,
            live=True,
            target_address=target.migration_address,
            trust_shared_storage=bool(pool is not None and pool.shared),
            timeout=fleet_settings().migration_timeout_seconds,
        )
    except libvirt_driver.DriverError as error:
        DesktopMove.objects.filter(pk=move.pk).update(
            status=MoveStatus.FAILED, detail=str(error), finished_at=timezone.now()
        )
        move.refresh_from_db()
        logger.warning("live migration of %s failed: %s", desktop.domain_name, error)
        return move
    seconds = time.monotonic() - started
    with transaction.atomic():
        Desktop.objects.filter(pk=desktop.pk, hypervisor=source).update(hypervisor=target)
        desktop_event_record(
            desktop,
            f"live-migrated from {source.name} to {target.name} "
            f"({MoveReason(reason).label.lower()}, {seconds:.1f} s)",
            actor,
        )
        DesktopMove.objects.filter(pk=move.pk).update(
            status=MoveStatus.DONE, detail=f"{seconds:.1f} s", finished_at=timezone.now()
        )
    desktop.refresh_from_db()
    if desktop.status != DesktopStatus.STARTED:
        try:
            state = libvirt_driver.domain_state(target.uri, desktop.domain_name)
        except libvirt_driver.DriverError:
            state = libvirt_driver.DomainState.OTHER
        desktop_sync_state(desktop=desktop, state=state, source=f"live migration to {target}")
    # Sample both hosts now: the next decision (the rest of a plan, the next start) must see
    # the memory where it went, not where the last sample left it.
    hypervisor_refresh(hypervisor=source)
    hypervisor_refresh(hypervisor=target)
    move.refresh_from_db()
    return move


def move_at_next_start(
    desktop_id: int, source_id: int, target_id: int, reason: MoveReason
) -> DesktopMove:
    """Leave the guest running; its next start goes to `target` (if it still fits)."""
    with transaction.atomic():
        DesktopMove.objects.filter(
            desktop_id=desktop_id, kind=MoveKind.AT_NEXT_START, status=MoveStatus.PENDING
        ).update(status=MoveStatus.CANCELLED, finished_at=timezone.now(), detail="a newer plan")
        return DesktopMove.objects.create(
            desktop_id=desktop_id,
            source_id=source_id,
            target_id=target_id,
            kind=MoveKind.AT_NEXT_START,
            reason=reason,
        )


@dataclass
class MovesResult:
    """What one drain step or rebalancing run did."""

    skipped: str = ""
    planned: int = 0
    migrated: int = 0
    at_next_start: int = 0
    stopped: int = 0
    failed: int = 0
    spread_before: float = 0.0
    spread_after: float = 0.0
    details: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "skipped": self.skipped,
            "planned": self.planned,
            "migrated": self.migrated,
            "at_next_start": self.at_next_start,
            "stopped": self.stopped,
            "failed": self.failed,
            "spread_before": round(self.spread_before, 4),
            "spread_after": round(self.spread_after, 4),
        }


def moves_lock_timeout(moves: int) -> float:
    """Long enough for `moves` migrations that each run into their timeout."""
    return 60 + moves * (fleet_settings().migration_timeout_seconds + 30)
