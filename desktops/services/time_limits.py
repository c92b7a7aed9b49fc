"""Time limits: a course's longest session, a warning before its end, and "extend".

A session begins when the desktop starts (a pool's free desktop: when a student takes
it) and ends `Course.session_limit_minutes` later. A beat task every minute warns the
students whose end is near (on their dashboard, live) and shuts down, cleanly (ACPI, then
forced), the desktops whose time is over, with an event saying why. A student may extend
`Course.session_extensions` times by `Course.session_extension_minutes`; each extension is
a compare-and-set on the end it saw, so two clicks at once extend once.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from accounts.models import User
from desktops.choices import DesktopStatus
from desktops.models import Desktop
from desktops.services.lifecycle import desktop_begin_shutdown
from desktops.services.sessions import extensions_left
from desktops.services.transitions import (
    broadcast_status_payloads,
    check_can_act,
    desktop_event_record,
    desktop_status_payload,
)
from isard.core.errors import ApplicationError, ConflictError

logger = logging.getLogger(__name__)

S = DesktopStatus


def desktop_extend(*, actor: User, desktop: Desktop) -> Desktop:
    """More time for a running session, as often as the course allows."""
    check_can_act(actor, desktop)
    course = desktop.course
    if desktop.status != S.STARTED or desktop.session_ends_at is None or course is None:
        raise ConflictError(f"“{desktop.name}” has no time limit running.")
    if extensions_left(desktop) <= 0:
        raise ConflictError(
            f"“{desktop.name}” cannot be extended again: the course allows "
            f"{course.session_extensions} extension(s).",
            extra={"reason": "no-extensions-left"},
        )
    ends = desktop.session_ends_at + timedelta(minutes=course.session_extension_minutes)
    extended = Desktop.objects.filter(
        pk=desktop.pk,
        status=S.STARTED,
        session_ends_at=desktop.session_ends_at,
        session_extensions_used=desktop.session_extensions_used,
    ).update(
        session_ends_at=ends,
        session_warn_at=ends - timedelta(minutes=course.session_warning_minutes),
        session_extensions_used=desktop.session_extensions_used + 1,
    )
    desktop.refresh_from_db()
    if not extended:
        return desktop  # a second click at once: the first one extended it
    desktop_event_record(
        desktop,
        f"extended by {course.session_extension_minutes} min, until {ends:%H:%M} UTC",
        actor,
    )
    broadcast_status_payloads([(desktop.owner_id, desktop_status_payload(desktop))])
    return desktop


def _minutes(delta: timedelta) -> int:
    return max(1, round(delta.total_seconds() / 60))


def desktops_enforce_time_limits(*, now: datetime | None = None) -> dict[str, int]:
    """Warn the sessions near their end; shut down those whose time is over (beat)."""
    now = now or timezone.now()
    running = Desktop.objects.filter(status=S.STARTED, session_ends_at__isnull=False)
    warned = 0
    payloads: list[tuple[int, dict[str, Any]]] = []
    near = running.filter(session_warn_at__lte=now, session_ends_at__gt=now)
    for desktop in near.select_related("course"):
        assert desktop.session_ends_at is not None
        if not Desktop.objects.filter(pk=desktop.pk, session_warn_at__isnull=False).update(
            session_warn_at=None
        ):
            continue  # another beat warned it
        left = _minutes(desktop.session_ends_at - now)
        warning = f"“{desktop.name}” shuts down in {left} min (time limit): save your work" + (
            ", or extend it." if extensions_left(desktop) else "."
        )
        payloads.append((desktop.owner_id, {**desktop_status_payload(desktop), "warning": warning}))
        warned += 1
    broadcast_status_payloads(payloads)
    ended = 0
    # The shutdown sends its tasks to the desktop's host: loaded with it, not one query each.
    for desktop in running.filter(session_ends_at__lte=now).select_related("hypervisor"):
        try:
            desktop_begin_shutdown(
                desktop=desktop,
                reason="The session's time is over (the course's time limit); shutting down.",
            )
            ended += 1
        except ApplicationError as error:
            logger.warning("desktop %s not shut down at its time limit: %s", desktop.pk, error)
    return {"warned": warned, "ended": ended}
