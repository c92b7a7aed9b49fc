"""Local accounts (passwords kept by isard), refused in schools that turned them off."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.backends import ModelBackend

from accounts.models import School


def local_accounts_allowed(user: Any) -> bool:
    """Administrators always; everyone else unless their school signs in by directory only."""
    if getattr(user, "is_admin", False):
        return True
    school_id = getattr(user, "school_id", None)
    if school_id is None:
        return True
    return School.objects.filter(pk=school_id, local_accounts=True).exists()


class LocalAccountBackend(ModelBackend):
    """Django's password check, plus the school's choice of local accounts.

    `user_can_authenticate` is also what keeps an existing session alive, so turning local
    accounts off for a school signs its people with local passwords out at their next
    request.
    """

    def user_can_authenticate(self, user: Any) -> bool:
        return super().user_can_authenticate(user) and local_accounts_allowed(user)
