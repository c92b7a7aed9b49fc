"""Who has a desktop's screen open: the platform's viewers (the browser proxy, the SPICE
gateway's tunnels) say so, for the idle shutdown (`desktops.services.idle`).

Every viewer the platform hands out goes through one of the two, so they see every
connection a student makes. Each open connection is a member of a Redis sorted set per
desktop, scored with its last heartbeat (every `HEARTBEAT_SECONDS`); one whose process
died stops beating and counts for nothing after `STALE_SECONDS`. A close writes when the
screen was last looked at. All best-effort with short timeouts: a viewer works through a
Redis outage (the idle shutdown then sees no one and waits for the next answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from redis.exceptions import RedisError

from isard.core.metrics import metrics_redis

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 60.0
#: A connection not heard of for this long is gone (its process died without closing).
STALE_SECONDS = 150.0
#: How long the time of the last close is kept (longer than any idle limit).
LEFT_KEEP_SECONDS = 2 * 24 * 3600


def _open_key(desktop_id: int) -> str:
    return f"isard:viewers:{desktop_id}"


def _left_key(desktop_id: int) -> str:
    return f"isard:viewer-left:{desktop_id}"


def viewer_seen(desktop_id: int, connection: str, *, now: float | None = None) -> None:
    try:
        client = metrics_redis()
        pipe = client.pipeline(transaction=False)
        pipe.zadd(_open_key(desktop_id), {connection: now or time.time()})
        pipe.expire(_open_key(desktop_id), int(STALE_SECONDS * 4))
        pipe.execute()
    except RedisError as error:
        logger.debug("viewer presence of desktop %s not written: %s", desktop_id, error)


def viewer_gone(desktop_id: int, connection: str, *, now: float | None = None) -> None:
    try:
        client = metrics_redis()
        pipe = client.pipeline(transaction=False)
        pipe.zrem(_open_key(desktop_id), connection)
        pipe.set(_left_key(desktop_id), str(now or time.time()), ex=LEFT_KEEP_SECONDS)
        pipe.execute()
    except RedisError as error:
        logger.debug("viewer presence of desktop %s not written: %s", desktop_id, error)


@dataclass(frozen=True)
class Presence:
    open: int  # connections heard of within STALE_SECONDS
    last_seen: float | None  # epoch seconds: the latest heartbeat or close, if any


def presence_of(desktop_ids: Iterable[int], *, now: float | None = None) -> dict[int, Presence]:
    """Each desktop's open viewers and when its screen was last looked at (one round
    trip for them all). Raises RedisError: the caller decides what no answer means."""
    ids = list(desktop_ids)
    now = now or time.time()
    pipe = metrics_redis().pipeline(transaction=False)
    for desktop_id in ids:
        pipe.zremrangebyscore(_open_key(desktop_id), "-inf", now - STALE_SECONDS)
        pipe.zrange(_open_key(desktop_id), -1, -1, withscores=True)
        pipe.zcard(_open_key(desktop_id))
        pipe.get(_left_key(desktop_id))
    replies = pipe.execute()
    found: dict[int, Presence] = {}
    for index, desktop_id in enumerate(ids):
        _, newest, count, left = replies[index * 4 : index * 4 + 4]
        seen = [float(newest[0][1])] if newest else []
        if left is not None:
            seen.append(float(left))
        found[desktop_id] = Presence(open=int(count), last_seen=max(seen) if seen else None)
    return found


@contextlib.asynccontextmanager
async def watching(desktop_id: int) -> AsyncIterator[None]:
    """Around one open viewer connection: present while it lasts, beating meanwhile."""
    connection = uuid.uuid4().hex
    await asyncio.to_thread(viewer_seen, desktop_id, connection)

    async def beat() -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            await asyncio.to_thread(viewer_seen, desktop_id, connection)

    beating = asyncio.create_task(beat())
    try:
        yield
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating
        await asyncio.to_thread(viewer_gone, desktop_id, connection)
