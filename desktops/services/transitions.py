"""The one place a desktop's status changes, its event rows and its live broadcast."""

from __future__ import annotations

import logging
from collections import Counter as CountOf
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from accounts.models import User
from desktops import task_calls
from desktops.choices import TRANSITIONS, DesktopStatus
from desktops.models import Desktop, DesktopEvent
from desktops.permissions import can_act_on_desktop
from isard.core import metrics
from isard.core.broadcast import group_send_many
from isard.core.errors import (
    ConflictError,
    PermissionDeniedError,
)
from isard.core.tasks import send_after_commit
from isard.core.transitions import Change, StateMachine

logger = logging.getLogger(__name__)


S = DesktopStatus


def desktop_transition(
    *,
    desktop: Desktop,
    to: DesktopStatus,
    reason: str = "",
    actor: User | None = None,
    **fields: Any,
) -> Desktop:
    """Move `desktop` from its current status (as loaded) to `to`, or raise ConflictError."""
    _changed, conflicts = desktops_transition(
        changes=[(desktop, fields)], to=to, reason=reason, actor=actor
    )
    if conflicts:
        raise conflicts[0]
    return desktop


def desktops_transition(
    *,
    changes: Sequence[tuple[Desktop, dict[str, Any]]],
    to: DesktopStatus,
    reason: str = "",
    actor: User | None = None,
) -> tuple[list[Desktop], list[ConflictError]]:
    """The one place a status changes; for one desktop or a whole class in one transaction.

    For each (desktop, extra fields): checks the declared table, then updates with
    `WHERE status = <as loaded>`, so a desktop another worker changed meanwhile is left
    alone and reported as a conflict. Writes the audit rows and, after commit, sends each
    owner's websocket the new status. Returns the desktops changed and the conflicts.
    """
    before = {desktop.pk: desktop.status for desktop, _ in changes} if to == S.STOPPED else {}
    changed, conflicts = DESKTOP_STATES.transition_many(
        changes=changes, to=to, reason=reason, actor=actor
    )
    if before:
        _renew_volatile([d for d in changed if before[d.pk] in _RAN and d.volatile])
    return changed, conflicts


def _event_of(change: Change[Desktop], actor: User | None) -> DesktopEvent:
    return DesktopEvent(
        desktop=change.instance,
        from_status=change.from_status,
        to_status=change.to_status,
        reason=change.reason,
        actor=actor,
    )


#: A failure's reason is free text (it names hosts and errors); the metrics label it by
#: the first of these beginnings it has, so the label keeps a handful of values.
FAILURE_REASON_KINDS: tuple[tuple[str, str], ...] = (
    ("The desktop has no disk", "disk_missing"),
    ("The desktop has no template disk", "disk_missing"),
    ("The desktop's disk or its template is missing", "disk_missing"),
    ("The hypervisor it was placed on", "hypervisor_gone"),
    ("Could not start on", "hypervisor_error"),
    ("Could not start:", "storage_refused"),
    ("Could not create", "create_error"),
    ("Could not shut down", "stop_error"),
    ("Could not force off", "stop_error"),
    ("No hypervisor", "no_capacity"),
    ("“", "interrupted"),
)


def failure_reason_kind(reason: str) -> str:
    """The bounded kind of a failure's reason, for the metrics' `reason` label."""
    for beginning, kind in FAILURE_REASON_KINDS:
        if reason.startswith(beginning):
            return kind
    return "other"


def _record_metrics(changes: Sequence[Change[Desktop]]) -> None:
    """Starts, failures and start-to-running times, once the changes are committed.

    A class's changes come in one call: each counter is written once per label set."""
    starts: CountOf[str] = CountOf()
    failures: CountOf[tuple[str, str]] = CountOf()
    for change in changes:
        if change.to_status == S.STARTING:
            starts[change.from_status] += 1
        elif change.to_status == S.FAILED:
            failures[(change.from_status, failure_reason_kind(change.reason))] += 1
        elif (
            change.to_status == S.STARTED
            and change.from_status == S.STARTING
            and change.previous_changed_at is not None
        ):
            waited = change.changed_at - change.previous_changed_at
            metrics.observe(metrics.DESKTOP_START_TO_RUNNING, waited.total_seconds())
    for from_status, amount in starts.items():
        metrics.count(metrics.DESKTOP_STARTS, amount, from_status=from_status)
    for (from_status, kind), amount in failures.items():
        metrics.count(metrics.DESKTOP_FAILURES, amount, from_status=from_status, reason=kind)


def _after_commit(changes: Sequence[Change[Desktop]]) -> None:
    _broadcast_changes(changes)
    _record_metrics(changes)


#: A volatile desktop stopping from one of these has run; it starts over from its template.
_RAN = frozenset({S.STARTED, S.SHUTTING_DOWN, S.STOPPING, S.UNKNOWN})


def _renew_volatile(desktops: Sequence[Desktop]) -> None:
    """Volatile desktops that stopped, however they stopped (a shutdown, the guest powering
    off, a force-off, the reconciler), go back to their template: caught here, where every
    status change passes (`desktops.services.renewal`). Sent once committed; a broker that
    cannot take it leaves them stopped on their last disk (logged), it does not undo a stop.
    """
    ids = [desktop.pk for desktop in desktops]
    if ids:
        send_after_commit(task_calls.renew_volatile(desktop_ids=ids), quiet=True)


def _broadcast_changes(changes: Sequence[Change[Desktop]]) -> None:
    broadcast_status_payloads(
        [
            (
                change.instance.owner_id,
                desktop_status_payload(
                    change.instance,
                    status=DesktopStatus(change.to_status),
                    reason=change.reason,
                    changed_at=change.changed_at,
                ),
            )
            for change in changes
        ]
    )


def broadcast_status_payloads(payloads: Sequence[tuple[int, dict[str, Any]]]) -> None:
    """Send desktops' statuses (as committed) to their owners' websocket groups.

    A desktop of a course goes to the course's group too, where its teachers' pages
    listen: a class of thirty starting shows up live on the teacher's screen.
    """
    messages: list[tuple[str, dict[str, Any]]] = []
    for owner_id, payload in payloads:
        event = {"type": "desktop.status", "desktop": payload}
        messages.append((owner_group(owner_id), event))
        if payload.get("course"):
            messages.append((course_group(payload["course"]), event))
    group_send_many(messages)


def broadcast_desktop_status(desktop_id: int) -> None:
    """Send the desktop's current status, read from the database, to its owner."""
    desktop = Desktop.objects.filter(pk=desktop_id).first()
    if desktop is not None:
        broadcast_status_payloads([(desktop.owner_id, desktop_status_payload(desktop))])


def owner_group(user_id: int) -> str:
    return f"desktops.user.{user_id}"


def course_group(course_id: int) -> str:
    return f"desktops.course.{course_id}"


def desktop_status_payload(
    desktop: Desktop,
    *,
    status: DesktopStatus | None = None,
    reason: str | None = None,
    changed_at: datetime | None = None,
) -> dict[str, Any]:
    """What the websocket sends about a desktop (overrides: the values being written)."""
    status = status or DesktopStatus(desktop.status)
    return {
        "id": desktop.pk,
        "uuid": str(desktop.uuid),
        "owner": desktop.owner_id,
        "course": desktop.course_id,
        "name": desktop.name,
        "status": status.value,
        "status_label": status.label,
        "status_reason": desktop.status_reason if reason is None else reason,
        "status_changed_at": (changed_at or desktop.status_changed_at).isoformat(),
        "session_ends_at": (
            desktop.session_ends_at.isoformat()
            if desktop.session_ends_at is not None and status == S.STARTED
            else None
        ),
    }


def desktops_record_created(desktops: Sequence[Desktop], *, actor: User | None) -> None:
    """The first event of new desktops: they are born "creating", no transition wrote it."""
    DesktopEvent.objects.bulk_create(
        [DesktopEvent(desktop=desktop, to_status=S.CREATING, actor=actor) for desktop in desktops]
    )


def desktop_event_record(desktop: Desktop, reason: str, actor: User | None = None) -> None:
    """Something happened to the desktop that did not change its status (a reset, a look
    at its screen, a move to another host): an event row all the same."""
    DesktopEvent.objects.create(
        desktop=desktop,
        from_status=desktop.status,
        to_status=desktop.status,
        reason=reason,
        actor=actor,
    )


def desktop_fail(desktop: Desktop, reason: str) -> Desktop:
    """Record a failure; if someone else moved the desktop meanwhile, their status stands."""
    desktop.refresh_from_db()
    if S.FAILED not in TRANSITIONS[DesktopStatus(desktop.status)]:
        logger.warning("desktop %s: %s (left %s)", desktop.pk, reason, desktop.status)
        return desktop
    try:
        return desktop_transition(desktop=desktop, to=S.FAILED, reason=reason)
    except ConflictError:
        desktop.refresh_from_db()
        return desktop


def check_can_act(actor: User, desktop: Desktop) -> None:
    if not can_act_on_desktop(actor, desktop):
        raise PermissionDeniedError("This desktop is not yours.")


def undo_creation(desktop_ids: Sequence[int]) -> Callable[[str], None]:
    """An `undo` for new desktops: remove those still creating with nothing made yet."""

    def undo(reason: str) -> None:
        removed, _ = Desktop.objects.filter(
            pk__in=list(desktop_ids), status=S.CREATING, disk__isnull=True
        ).delete()
        logger.warning("removed %s new desktops: %s", removed, reason)

    return undo


def undo_transition(desktop: Desktop, previous: DesktopStatus) -> Callable[[str], None]:
    """An `undo` for a busy status: back to `previous` if the table allows, else failed."""
    busy = DesktopStatus(desktop.status)

    def undo(reason: str) -> None:
        current = Desktop.objects.filter(pk=desktop.pk).first()
        if current is None or current.status != busy:
            return  # someone else moved it meanwhile
        target = previous if previous in TRANSITIONS[busy] else S.FAILED
        try:
            desktop_transition(desktop=current, to=target, reason=reason)
        except ConflictError:
            pass
        desktop.refresh_from_db()

    return undo


#: Desktops' statuses: the table in `desktops.choices`, an event row per change, and the
#: owner's (and course's) websocket told after commit.
DESKTOP_STATES: StateMachine[Desktop] = StateMachine(
    model=Desktop,
    statuses=DesktopStatus,
    table=TRANSITIONS,
    noun="desktop",
    event=_event_of,
    changed_at_field="status_changed_at",
    after_commit=_after_commit,
)
