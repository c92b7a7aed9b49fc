"""When a desktop ran, from its status changes, split into hours (UTC): pure functions.

A desktop counts as running from *started* until it is stopped (a shutdown under way
still runs the guest). *Starting* does not count (placing and defining it, the guest
not yet up), nor *unknown*: its host stopped answering and nobody can tell; the
reconciliation then records what the host really runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from desktops.choices import DesktopStatus

S = DesktopStatus

RUNNING_STATUSES = frozenset({S.STARTED, S.SHUTTING_DOWN, S.STOPPING})

HOUR = timedelta(hours=1)


def floor_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def running_spans(
    *,
    running_at_start: bool,
    changes: Iterable[tuple[datetime, str]],
    start: datetime,
    end: datetime,
) -> list[tuple[datetime, datetime]]:
    """The spans inside [start, end) during which the desktop ran.

    `changes` are (when, new status), oldest first, all inside [start, end); a change
    that keeps the desktop running (an event about a running desktop) changes nothing.
    """
    spans: list[tuple[datetime, datetime]] = []
    began: datetime | None = start if running_at_start else None
    for at, status in changes:
        running = status in RUNNING_STATUSES
        if running and began is None:
            began = at
        elif not running and began is not None:
            if at > began:
                spans.append((began, at))
            began = None
    if began is not None and end > began:
        spans.append((began, end))
    return spans


def seconds_per_hour(spans: Iterable[tuple[datetime, datetime]]) -> dict[datetime, int]:
    """Each hour's running seconds, hours by their start; never more than 3,600."""
    totals: dict[datetime, float] = {}
    for began, ended in spans:
        hour = floor_hour(began)
        while hour < ended:
            part = min(ended, hour + HOUR) - max(began, hour)
            totals[hour] = totals.get(hour, 0.0) + part.total_seconds()
            hour += HOUR
    return {hour: min(round(seconds), 3600) for hour, seconds in totals.items() if seconds >= 0.5}
