"""One Redis connection pool per process for Django's cache, shared by every thread.

Django keeps a cache object per thread, and each makes its own connection pool. Under
Daphne every request runs its sync code in a new thread (asgiref's per-request
thread-sensitive context), so every request that touched the cache (each API call: the
rate limits count there) opened a new TCP connection to Redis and sent HELLO before its
first command: about a third of an API request's CPU. With this pool class
(`CACHES["default"]["OPTIONS"]["pool_class"]`) the cache objects of one process share one
pool per URL and options, and connections are reused. redis-py's pools are thread-safe and
start afresh in a forked child.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import redis


class SharedConnectionPool(redis.ConnectionPool):
    """`from_url` returns the process's pool for that URL and options, made once."""

    _shared: ClassVar[dict[tuple[str, str], SharedConnectionPool]] = {}
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Any:
        key = (url, repr(sorted(kwargs.items())))
        with cls._shared_lock:
            pool = cls._shared.get(key)
            if pool is None:
                pool = super().from_url(url, **kwargs)
                cls._shared[key] = pool
            return pool
