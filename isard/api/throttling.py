"""Rate limits for the API, counted in the shared cache (Redis) so that every process agrees.

The rates are read from `ISARD_API_THROTTLE_RATES` at each request (not once at import,
as DRF's own classes do), so that they can be changed in settings and in tests.

DRF's window (the times of the requests of the last period, per person) is kept as a
sorted set in Redis and checked and updated by one script: one round trip per request
instead of DRF's two (read the pickled list, write it back), and atomic, so that
concurrent requests of one person cannot both take the last place. The window, the
limit and the `Retry-After` advice are DRF's. With another cache than isard's Redis
cache (isard.cache.RedisCache), DRF's own counting is used.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import redis
from django.conf import settings
from django.core.cache import DEFAULT_CACHE_ALIAS, caches
from django.core.cache import cache as default_cache
from redis.commands.core import Script
from redis.exceptions import RedisError
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle

from isard.cache import RedisCache

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


def _window_script(client: redis.Redis) -> Script:
    script = _scripts.get(id(client))
    if script is None:
        script = _scripts[id(client)] = client.register_script(_WINDOW_SCRIPT)
    return script


class SettingsRateThrottle(SimpleRateThrottle):
    num_requests: int  # parsed from the rate by DRF
    duration: int

    def allow_request(self, request: Request, view: Any) -> bool:
        """Count the request; with the cache (Redis) unreachable, let it through.

        Rate limits protect the hypervisors from floods; they are not worth a 500 on
        every request while Redis is down. The request goes on to its service, which
        answers with what really failed (a start: "the task queue is unreachable").
        """
        try:
            # DRF's `cache` is Django's proxy to this thread's default cache.
            backend = caches[DEFAULT_CACHE_ALIAS] if self.cache is default_cache else self.cache
            if not isinstance(backend, RedisCache):
                return bool(super().allow_request(request, view))
            return self._allow_in_redis(request, view, backend)
        except RedisError as error:
            logger.warning("rate limits not counted, the cache is unreachable: %s", error)
            return True

    def _allow_in_redis(self, request: Request, view: Any, cache: RedisCache) -> bool:
        if self.rate is None:
            return True
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return True
        self.now = self.timer()
        client = cache.redis_client()
        allowed, count, oldest = _window_script(client)(
            keys=[cache.make_and_validate_key(self.key)],
            args=[repr(self.now), self.duration, self.num_requests, uuid.uuid4().hex],
            client=client,
        )
        self._window = (int(count), float(oldest))
        return bool(allowed)

    def wait(self) -> float | None:
        window: tuple[int, float] | None = getattr(self, "_window", None)
        if window is None:
            return super().wait()
        count, oldest = window
        remaining = self.duration - (self.now - oldest) if count else self.duration
        available = self.num_requests - count + 1
        return None if available <= 0 else remaining / float(available)

    def get_rate(self) -> str | None:
        rates: dict[str, str] = getattr(settings, "ISARD_API_THROTTLE_RATES", {})
        return rates.get(self.scope or "") or None

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        user = request.user
        ident = str(user.pk) if user and user.is_authenticated else self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}


class UserRateThrottle(SettingsRateThrottle):
    """Every request, per person (per address when anonymous)."""

    scope = "user"


class DesktopActionThrottle(SettingsRateThrottle):
    """Operations that make a hypervisor work (create, start, stop...), per person."""

    scope = "desktop_action"


class LoginRateThrottle(SettingsRateThrottle):
    """Sign-in attempts, per client address, whoever they claim to be."""

    scope = "login"

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}
