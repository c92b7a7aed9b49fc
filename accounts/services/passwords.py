"""Passwords of local accounts: a one-time reset by someone who manages the person, and
the person's own change.
"""

from __future__ import annotations

import logging
import secrets

from accounts.models import (
    LdapAccount,
    User,
)
from accounts.permissions import can_manage_user
from accounts.services.enrolment import CODE_ALPHABET
from isard.core.errors import ConflictError, PermissionDeniedError

logger = logging.getLogger(__name__)


def user_password_reset(*, actor: User, user: User) -> str:
    """Give `user` a one-time temporary password, returned once to show to them.

    Only the hash is stored. At their next sign-in they must choose a new password before
    anything else (`must_change_password`); their open sessions end at once. People who
    sign in with the directory keep their password there.
    """
    if not can_manage_user(actor, user):
        raise PermissionDeniedError(
            f"Only an administrator or a manager of {user.get_username()}'s school can reset "
            "their password."
        )
    if LdapAccount.objects.filter(user=user).exists():
        raise ConflictError(
            f"{user.get_username()} signs in with the school's directory (LDAP): reset the "
            "password there."
        )
    if user.school is not None and not user.school.local_accounts and not user.is_admin:
        raise ConflictError(
            f"“{user.school.name}” has no local accounts: {user.get_username()} signs in with "
            "the school's directory."
        )
    temporary = "-".join(
        "".join(secrets.choice(CODE_ALPHABET.lower()) for _ in range(4)) for _ in range(3)
    )
    user.set_password(temporary)
    user.must_change_password = True
    user.save(update_fields=["password", "must_change_password"])
    logger.info("%s reset the password of %s", actor, user)
    return temporary


def user_password_change(*, user: User, password: str) -> None:
    """The person chose a new password (after a reset, or at any time)."""
    user.set_password(password)
    user.must_change_password = False
    user.save(update_fields=["password", "must_change_password"])
