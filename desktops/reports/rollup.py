"""Summing the event rows into `UsageHour` rows: hourly, and for a desktop being purged.

The event rows are the truth, but they go when a desktop is purged, and a year of them
is slow to read. So once an hour is over its seconds are written as `UsageHour` rows,
and `UsageRollup.until` says how far that has got. Moving it is a conditional update in
the same transaction as the rows (`WHERE until = <as read>`): of two rollups racing,
one writes the hours and the other nothing. A purge writes the desktop's hours since
`until` before its events go; the rollup, which reads the events, then cannot count
them again.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from desktops.models import Desktop, DesktopEvent, UsageHour, UsageRollup
from desktops.reports.hours import DesktopHours, desktops_hours, usage_desktops
from desktops.reports.segments import floor_hour

logger = logging.getLogger(__name__)

#: One transaction sums at most this much: a first rollup of a long history goes by days.
ROLLUP_STEP = timedelta(days=1)
#: An hour is summed this long after it is over: an event row written by a transaction
#: still open at the hour's end carries a time inside it.
ROLLUP_DELAY = timedelta(minutes=5)


def usage_until(*, now: datetime | None = None) -> datetime:
    """Where the rollup stands; the first time, the hour of the oldest event."""
    row = UsageRollup.objects.filter(pk=1).first()
    if row is not None:
        return row.until
    first = DesktopEvent.objects.order_by("created_at").values_list("created_at", flat=True)
    oldest = first.first() or now or timezone.now()
    row, _created = UsageRollup.objects.get_or_create(pk=1, defaults={"until": floor_hour(oldest)})
    return row.until


def _rows(found: list[DesktopHours]) -> list[UsageHour]:
    return [
        UsageHour(
            hour=hour,
            desktop_id=desktop.desktop_id,
            desktop_name=desktop.desktop_name,
            owner_id=desktop.owner_id,
            course_id=desktop.course_id,
            template_id=desktop.template_id,
            school_id=desktop.school_id,
            seconds=seconds,
        )
        for desktop in found
        for hour, seconds in sorted(desktop.seconds.items())
    ]


def usage_rollup_step(*, start: datetime, end: datetime) -> int | None:
    """Sum [start, end) if the rollup still stands at `start`; None if another did it."""
    with transaction.atomic():
        moved = UsageRollup.objects.filter(pk=1, until=start).update(until=end)
        if not moved:
            return None
        rows = _rows(desktops_hours(start=start, end=end))
        UsageHour.objects.bulk_create(rows)
    return len(rows)


def usage_rollup(*, now: datetime | None = None) -> int:
    """Sum every hour that is over and not summed yet; the number of rows written."""
    now = now or timezone.now()
    target = floor_hour(now - ROLLUP_DELAY)
    written = 0
    start = usage_until(now=now)
    while start < target:
        end = min(start + ROLLUP_STEP, target)
        step = usage_rollup_step(start=start, end=end)
        if step is None:
            logger.info("usage: another rollup summed the hours from %s", start.isoformat())
        else:
            written += step
        start = usage_until(now=now)
    return written


def usage_keep_purged(*, desktop: Desktop, now: datetime | None = None) -> int:
    """Before a desktop's events go: write its hours the rollup has not summed yet.

    Call it inside the purge's transaction; the rollup row is locked meanwhile (on
    PostgreSQL), so a rollup cannot read these events and count them a second time.
    """
    now = now or timezone.now()
    usage_until(now=now)
    start = UsageRollup.objects.select_for_update().get(pk=1).until
    found = desktops_hours(start=start, end=now, desktops=usage_desktops().filter(pk=desktop.pk))
    rows = _rows(found)
    UsageHour.objects.bulk_create(rows)
    return len(rows)
