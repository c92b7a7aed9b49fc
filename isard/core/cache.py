"""One Redis connection pool per process for Django's cache, shared by every thread.

Django keeps a cache object per thread, and each makes its own connection pool. Under
Daphne every request runs its sync code in a new thread (asgiref's per-request
thread-sensitive context), so every request that touched the cache (each API call: the
rate limits count there) opened a new TCP connection to Redis and sent HELLO before its
first command: about a third of an API request's CPU. With this pool class
(`CACHES["default"]["OPTIONS"]["pool_class"]`) the cache objects of one process share one
pool per URL and options, and connections are reused. redis-py's pools are thread-safe and
start afresh in a forked child.

Django's Redis cache also makes a new `redis.Redis` object for every command (copying
its table of about 170 reply callbacks, and more): two per API request, for the rate
limit's read and write, about 5% of the request. The backend here (`RedisCache`, the
setting's `BACKEND`) keeps one client per pool instead; a client holds no connection of
its own (it takes one from the pool for each command), so threads may share it.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import redis
from django.core.cache.backends import redis as django_redis


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


def _client_of(pool: redis.ConnectionPool) -> redis.Redis:
    client: redis.Redis | None = getattr(pool, "_isard_client", None)
    if client is None:
        # Two threads may both make one; either will do.
        client = redis.Redis(connection_pool=pool)
        pool._isard_client = client  # type: ignore[attr-defined]
    return client


class RedisCacheClient(django_redis.RedisCacheClient):
    """Django's, with one `redis.Redis` per connection pool instead of one per command."""

    def get_client(self, key: Any = None, *, write: bool = False) -> redis.Redis:
        return _client_of(self._get_connection_pool(write))  # type: ignore[attr-defined]


class RedisCache(django_redis.RedisCache):
    def __init__(self, server: Any, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = RedisCacheClient

    def redis_client(self) -> redis.Redis:
        """The Redis client behind the cache, for what its API cannot say in one command
        (the rate limits' script)."""
        client: redis.Redis = self._cache.get_client(write=True)  # type: ignore[attr-defined]
        return client
