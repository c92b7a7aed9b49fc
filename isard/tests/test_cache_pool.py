"""The cache's Redis connections are shared by the threads of a process (see isard.cache)."""

from __future__ import annotations

import threading
from typing import Any

from django.core.cache import caches


def test_cache_objects_of_different_threads_reuse_one_redis_connection() -> None:
    seen: list[Any] = []

    def use_cache() -> None:
        cache = caches["default"]
        cache.set("isard-test-pool", 1, timeout=5)
        seen.append(cache._cache.get_client(write=True).connection_pool)  # type: ignore[attr-defined]

    for _ in range(3):
        thread = threading.Thread(target=use_cache)
        thread.start()
        thread.join()
    # Django made a cache object per thread; they all drew on the same pool, which
    # opened one connection for the three threads (one after another) instead of three.
    assert len({id(pool) for pool in seen}) == 1
    assert len(seen[0]._available_connections) + len(seen[0]._in_use_connections) == 1
    caches["default"].delete("isard-test-pool")
