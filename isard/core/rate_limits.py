"""Sliding-window rate limits counted in the shared cache (Redis), so every process agrees.

One implementation for the whole platform: the API's throttles (isard.core.api.throttling)
and the pages' limits on failed sign-ins and wrong course codes (accounts.rate_limits)
both take a place in a window here.

A window (the times of the requests of the last period, per key) is kept as a sorted set
in Redis and checked and updated by one script: one round trip, and atomic, so that
concurrent requests cannot both take the last place. The window, the limit and the wait
are DRF's (`SimpleRateThrottle`). With another cache than isard's Redis cache
(isard.core.cache.RedisCache), the window is DRF's list of times in the cache (not atomic;
development and tests only).

With Redis unreachable, a place is granted and a warning logged: the limits are there
against floods and guessing, and are not worth refusing every request (every sign-in)
while Redis is down.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass

import redis
from django.core.cache import DEFAULT_CACHE_ALIAS, caches
from django.core.cache.backends.base import BaseCache
from django.http import HttpRequest
from redis.commands.core import Script
from redis.exceptions import RedisError
from rest_framework.throttling import BaseThrottle

from isard.core.cache import RedisCache

logger = logging.getLogger(__name__)

#: KEYS[1]: the window; ARGV: now, the period in seconds, the limit, a unique member.
#: Answers [allowed (1/0), requests in the window (this one included when allowed),
#: the oldest request's time (now, with none: a limit of 0)]. Times go back as strings,
#: which Redis would otherwise truncate to integers.
_WINDOW_SCRIPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[2]))
local count = redis.call('ZCARD', KEYS[1])
if count >= tonumber(ARGV[3]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, count, oldest[2] or ARGV[1]}
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) * 1000))
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {1, count + 1, oldest[2]}
"""
_scripts: dict[int, Script] = {}

_PERIODS = {"s": 1, "m": 60, "h": 60 * 60, "d": 24 * 60 * 60}


def _window_script(client: redis.Redis) -> Script:
    script = _scripts.get(id(client))
    if script is None:
        script = _scripts[id(client)] = client.register_script(_WINDOW_SCRIPT)
    return script


def parse_rate(rate: str) -> tuple[int, int]:
    """ "10/minute" -> (10, 60): requests allowed and the period in seconds, as DRF reads it
    (the settings check the format at start)."""
    number, period = rate.split("/")
    return int(number), _PERIODS[period[0]]


@dataclass(frozen=True)
class RateWindow:
    """The answer of one `rate_window_take`: whether the place was taken, and the window."""

    key: str
    allowed: bool
    count: int  # requests in the window (this one included when allowed)
    oldest: float  # the time of the window's oldest request
    now: float
    limit: int
    period: int
    member: str  # this request's place, for `rate_window_release`
    counted: bool = True  # False: the cache was unreachable, nothing was counted

    def wait(self) -> float | None:
        """DRF's advice: seconds until the next request may go (None: unknown)."""
        remaining = self.period - (self.now - self.oldest) if self.count else self.period
        available = self.limit - self.count + 1
        return None if available <= 0 else remaining / float(available)

    def retry_after(self) -> int:
        """Whole seconds until the oldest place of a full window frees (at least one)."""
        return max(1, math.ceil(self.period - (self.now - self.oldest)))


def _cache(cache: BaseCache | None) -> BaseCache:
    return cache if cache is not None else caches[DEFAULT_CACHE_ALIAS]


def rate_window_take(
    *,
    key: str,
    rate: str | None = None,
    limit: int | None = None,
    period: int | None = None,
    now: float | None = None,
    cache: BaseCache | None = None,
) -> RateWindow:
    """Take a place in the window `key` (`rate` like "10/minute", or `limit` and `period`),
    unless it is full. Refusals are not counted: a flood does not extend its own ban."""
    if rate is not None:
        limit, period = parse_rate(rate)
    assert limit is not None and period is not None
    now = time.time() if now is None else now
    member = uuid.uuid4().hex
    backend = _cache(cache)
    try:
        if isinstance(backend, RedisCache):
            client = backend.redis_client()
            allowed, count, oldest = _window_script(client)(
                keys=[backend.make_and_validate_key(key)],
                args=[repr(now), period, limit, member],
                client=client,
            )
        else:
            allowed, count, oldest = _take_in_list(backend, key, now, limit, period)
            member = repr(now)
    except RedisError as error:
        logger.warning("rate limits not counted, the cache is unreachable: %s", error)
        return RateWindow(key, True, 0, now, now, limit, period, member, counted=False)
    return RateWindow(key, bool(allowed), int(count), float(oldest), now, limit, period, member)


def _take_in_list(
    cache: BaseCache, key: str, now: float, limit: int, period: int
) -> tuple[bool, int, float]:
    # DRF's list of times, newest first.
    history: list[float] = cache.get(key, [])
    while history and history[-1] <= now - period:
        history.pop()
    if len(history) >= limit:
        return False, len(history), history[-1] if history else now
    history.insert(0, now)
    cache.set(key, history, period)
    return True, len(history), history[-1]


def rate_window_release(window: RateWindow, *, cache: BaseCache | None = None) -> None:
    """Give back a place taken by `rate_window_take`: what went well does not count."""
    if not window.allowed or not window.counted:
        return
    backend = _cache(cache)
    try:
        if isinstance(backend, RedisCache):
            backend.redis_client().zrem(backend.make_and_validate_key(window.key), window.member)
        else:
            history: list[float] = backend.get(window.key, [])
            if window.now in history:
                history.remove(window.now)
                backend.set(window.key, history, window.period)
    except RedisError as error:
        logger.warning("rate limit place not released, the cache is unreachable: %s", error)


def client_address(request: HttpRequest) -> str:
    """The client's address as the API's throttles see it (X-Forwarded-For behind
    `NUM_PROXIES` proxies), so the pages and the API count the same person alike."""
    # get_ident reads only request.META, which a plain Django request has too.
    return str(BaseThrottle().get_ident(request))  # type: ignore[arg-type]
