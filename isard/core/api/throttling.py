"""Rate limits for the API, counted in the shared cache (Redis) so that every process agrees.

The rates are read from `ISARD_API_THROTTLE_RATES` at each request (not once at import,
as DRF's own classes do), so that they can be changed in settings and in tests.

The counting is isard.core.rate_limits' (shared with the pages' limits on sign-ins and course
codes): DRF's window, limit and `Retry-After` advice, kept in Redis as a sorted set and
checked and updated by one atomic script, one round trip per request instead of DRF's
two, so that concurrent requests of one person cannot both take the last place.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.cache import DEFAULT_CACHE_ALIAS, caches
from django.core.cache import cache as default_cache
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle

from isard.core.rate_limits import RateWindow, rate_window_take


class SettingsRateThrottle(SimpleRateThrottle):
    num_requests: int  # parsed from the rate by DRF
    duration: int

    def allow_request(self, request: Request, view: Any) -> bool:
        """Count the request; with the cache (Redis) unreachable, let it through.

        Rate limits protect the hypervisors from floods; they are not worth a 500 on
        every request while Redis is down (isard.core.rate_limits logs it). The request goes
        on to its service, which answers with what really failed (a start: "the task
        queue is unreachable").
        """
        if self.rate is None:
            return True
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return True
        self.now = self.timer()
        # DRF's `cache` is Django's proxy to this thread's default cache.
        cache = caches[DEFAULT_CACHE_ALIAS] if self.cache is default_cache else self.cache
        self._window = rate_window_take(
            key=self.key, limit=self.num_requests, period=self.duration, now=self.now, cache=cache
        )
        return self._window.allowed

    def wait(self) -> float | None:
        window: RateWindow | None = getattr(self, "_window", None)
        return super().wait() if window is None else window.wait()

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
