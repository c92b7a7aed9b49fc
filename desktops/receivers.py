"""Django signals the desktops listen to."""

from __future__ import annotations

from typing import Any

from accounts.models import User
from desktops.services.renewal import desktops_shut_down_on_sign_out


def on_sign_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    """Signing out shuts down the person's volatile desktops (they start over)."""
    if not isinstance(user, User):
        return
    desktops_shut_down_on_sign_out(user=user)
