"""Sending to Channels groups from synchronous code (services, Celery tasks).

`async_to_sync(layer.group_send)` runs each call on a fresh event loop, and
channels_redis keeps its Redis connections per loop, so every status change paid for a
new Redis connection (about 3 ms). Here one event loop thread per process sends every
message over the same connections. The thread is recreated after a fork (Celery's
prefork workers), because a forked child inherits the object but not the thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)

SEND_TIMEOUT_SECONDS = 2.0
T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_loop_pid: int | None = None


def _event_loop() -> asyncio.AbstractEventLoop:
    global _loop, _loop_pid
    with _lock:
        if _loop is None or _loop_pid != os.getpid() or not _loop.is_running():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            threading.Thread(target=run, name="isard-broadcast", daemon=True).start()
            ready.wait()
            _loop, _loop_pid = loop, os.getpid()
        return _loop


def group_send(group: str, message: dict[str, Any]) -> bool:
    """Send `message` to a Channels group; False (and a log line) if it could not be sent."""
    return group_send_many([(group, message)])


def group_send_many(messages: Sequence[tuple[str, dict[str, Any]]]) -> bool:
    """Send several (group, message) pairs concurrently, in order within each group."""
    layer = get_channel_layer()
    if layer is None or not messages:
        return False

    async def send_all() -> None:
        by_group: dict[str, list[dict[str, Any]]] = {}
        for group, message in messages:
            by_group.setdefault(group, []).append(message)

        async def send_group(group: str, group_messages: list[dict[str, Any]]) -> None:
            for message in group_messages:
                await layer.group_send(group, message)

        await asyncio.gather(*(send_group(g, m) for g, m in by_group.items()))

    future = asyncio.run_coroutine_threadsafe(send_all(), _event_loop())
    try:
        future.result(timeout=SEND_TIMEOUT_SECONDS)
    except Exception:  # a broken Redis must not undo a committed change
        logger.exception("could not send %d message(s) to the channel layer", len(messages))
        return False
    return True


def run(coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run a channel-layer coroutine on the shared loop (e.g. `receive` in a benchmark).

    channels_redis buffers what it reads for a channel on the loop that read it, so every
    call for one channel must use the same loop; `async_to_sync` would use a new one.
    """
    return asyncio.run_coroutine_threadsafe(coroutine, _event_loop()).result(timeout)
