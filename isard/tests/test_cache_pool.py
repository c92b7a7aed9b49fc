"""The cache's Redis connections are shared by the threads of a process (see isard.core.cache)."""

from __future__ import annotations

import threading
from typing import Any

from django.core.cache import caches


def connections_of(pool: Any) -> int:
    return len(pool._available_connections) + len(pool._in_use_connections)


def test_cache_objects_of_different_threads_reuse_one_redis_connection() -> None:
    seen: list[Any] = []
    # The pool lives as long as the process: earlier tests may have left it connections.
    pool = caches["default"]._cache.get_client(write=True).connection_pool  # type: ignore[attr-defined]
    before = connections_of(pool)

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
    assert {id(used) for used in seen} == {id(pool)}
    assert connections_of(pool) == max(before, 1)
    caches["default"].delete("isard-test-pool")


def test_every_command_of_a_process_goes_through_one_redis_client() -> None:
    """Django's backend made a `redis.Redis` per command; ours keeps one per pool."""
    cache = caches["default"]
    cache.set("isard-test-client", [1, 2], timeout=5)
    assert cache.get("isard-test-client") == [1, 2]
    clients: list[Any] = []

    def use_cache() -> None:
        clients.append(caches["default"]._cache.get_client(write=True))  # type: ignore[attr-defined]

    thread = threading.Thread(target=use_cache)
    thread.start()
    thread.join()
    assert clients[0] is cache._cache.get_client()  # type: ignore[attr-defined]
    cache.delete("isard-test-client")
    assert cache.get("isard-test-client") is None
