"""A running desktop's session under its course's time limit: when it ends, how many
extensions are left (the limits themselves: `desktops.services.time_limits`)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from desktops.models import Desktop


def session_fields(desktop: Desktop, *, now: datetime | None = None) -> dict[str, Any]:
    """The session columns a start (or a pool's hand-out) writes: a fresh session."""
    course = desktop.course
    limited = course is not None and course.session_limit_minutes > 0
    if not limited or (desktop.pool_id is not None and desktop.pool_taken_at is None):
        # No limit, or a pool's free desktop: its student's session begins at the take.
        return {"session_ends_at": None, "session_warn_at": None, "session_extensions_used": 0}
    assert course is not None
    now = now or timezone.now()
    ends = now + timedelta(minutes=course.session_limit_minutes)
    return {
        "session_ends_at": ends,
        "session_warn_at": ends - timedelta(minutes=course.session_warning_minutes),
        "session_extensions_used": 0,
    }


def extensions_left(desktop: Desktop) -> int:
    course = desktop.course
    if course is None or desktop.session_ends_at is None:
        return 0
    return max(0, course.session_extensions - desktop.session_extensions_used)
