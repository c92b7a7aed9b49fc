"""Idle shutdown: a running desktop nobody has had on screen for its course's
`idle_shutdown_minutes` is shut down cleanly (ACPI, then forced), with an event saying why.

"On screen" is what the platform's viewers report (`desktops.viewer.presence`): the
browser proxy and the SPICE gateway carry every viewer the platform hands out. The clock
starts at the latest of: the desktop started, a student took it from a pool, its screen
was last open. A pool's free desktops are kept running on purpose and never count as idle.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.utils import timezone
from redis.exceptions import RedisError

from desktops.choices import DesktopStatus
from desktops.models import Desktop
from desktops.pools.selectors import POOL_FREE
from desktops.services.lifecycle import desktop_begin_shutdown
from desktops.viewer.presence import presence_of
from isard.core.errors import ApplicationError

logger = logging.getLogger(__name__)

S = DesktopStatus


def desktops_shut_down_idle(*, now: datetime | None = None) -> int:
    """One pass (beat, every minute); returns how many were asked to shut down."""
    now = now or timezone.now()
    candidates = list(
        Desktop.objects.filter(status=S.STARTED, course__idle_shutdown_minutes__gt=0)
        .exclude(POOL_FREE)
        .select_related("course", "hypervisor")  # the limit; the host the shutdown goes to
    )
    if not candidates:
        return 0
    try:
        presence = presence_of([d.pk for d in candidates], now=now.timestamp())
    except RedisError as error:
        # Without an answer nobody can say a desktop is unwatched: none is shut down.
        logger.warning("idle shutdown skipped, viewer presence unknown: %s", error)
        return 0
    asked = 0
    for desktop in candidates:
        assert desktop.course is not None
        seen = presence[desktop.pk]
        if seen.open:
            continue
        since = max(
            moment.timestamp()
            for moment in (desktop.status_changed_at, desktop.pool_taken_at)
            if moment is not None
        )
        if seen.last_seen is not None:
            since = max(since, seen.last_seen)
        limit = desktop.course.idle_shutdown_minutes
        if now.timestamp() - since < limit * 60:
            continue
        try:
            desktop_begin_shutdown(
                desktop=desktop,
                reason=f"Nobody had its screen open for {limit} min (the course's idle "
                "limit); shutting down.",
            )
            asked += 1
        except ApplicationError as error:
            logger.warning("desktop %s not shut down when idle: %s", desktop.pk, error.message)
    return asked
