"""Rate limits for the API, counted in the shared cache (Redis) so that every process agrees.

The rates are read from `ISARD_API_THROTTLE_RATES` at each request (not once at import,
as DRF's own classes do), so that they can be changed in settings and in tests.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from redis.exceptions import RedisError
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle

logger = logging.getLogger(__name__)


class SettingsRateThrottle(SimpleRateThrottle):
    def allow_request(self, request: Request, view: Any) -> bool:
        """Count the request; with the cache (Redis) unreachable, let it through.

        Rate limits protect the hypervisors from floods; they are not worth a 500 on
        every request while Redis is down. The request goes on to its service, which
        answers with what really failed (a start: "the task queue is unreachable").
        """
        try:
            return bool(super().allow_request(request, view))
        except RedisError as error:
            logger.warning("rate limits not counted, the cache is unreachable: %s", error)
            return True

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
