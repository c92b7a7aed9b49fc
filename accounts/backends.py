"""Local accounts (passwords kept by isard), refused in schools that turned them off."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.backends import ModelBackend

from accounts.models import School, User


def local_accounts_allowed(user: Any) -> bool:
    """Administrators always; everyone else unless their school signs in by directory only."""
    if getattr(user, "is_admin", False):
        return True
    school_id = getattr(user, "school_id", None)
    if school_id is None:
        return True
    if isinstance(user, User) and User.school.is_cached(user):
        return bool(user.school and user.school.local_accounts)
    return School.objects.filter(pk=school_id, local_accounts=True).exists()


class LocalAccountBackend(ModelBackend):
    """Django's password check, plus the school's choice of local accounts.

    `user_can_authenticate` is also what keeps an existing session alive, so turning local
    accounts off for a school signs its people with local passwords out at their next
    request.
    """

    def user_can_authenticate(self, user: Any) -> bool:
        return super().user_can_authenticate(user) and local_accounts_allowed(user)

    def get_user(self, user_id: Any) -> User | None:
        """The signed-in person of a session, read with their school in one query.

        Every request of a signed-in person comes here; the school decides whether their
        local password still counts (`local_accounts_allowed`), which cost a query of its
        own on every page and API call.
        """
        try:
            user = User._default_manager.select_related("school").get(pk=user_id)
        except User.DoesNotExist:
            return None
        return user if self.user_can_authenticate(user) else None

    async def aget_user(self, user_id: Any) -> User | None:
        # ModelBackend's own checks `user_can_authenticate` inside the event loop, where
        # the school's query (when not loaded with the user) is not allowed.
        return await sync_to_async(self.get_user)(user_id)
