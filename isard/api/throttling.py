"""Rate limits for the API, counted in the shared cache (Redis) so that every process agrees.

The rates are read from `ISARD_API_THROTTLE_RATES` at each request (not once at import,
as DRF's own classes do), so that they can be changed in settings and in tests.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle


class SettingsRateThrottle(SimpleRateThrottle):
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
