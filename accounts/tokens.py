"""API tokens: made at login, listed and revoked by their owner, checked on every request.

A token is `isard_` followed by 32 random bytes (URL-safe base64); the database keeps its
SHA-256 only. Tokens expire after `ISARD_API_TOKEN_DAYS` (0: never), and a disabled
person's tokens stop working at once because authentication checks `is_active`.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from accounts.models import ApiToken, User
from isard.core.errors import ApplicationError, NotFoundError

TOKEN_PREFIX = "isard_"
#: `last_used_at` is written at most this often per token, not on every request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_token_create(
    *, user: User, name: str = "", now: datetime | None = None
) -> tuple[ApiToken, str]:
    """Make a token for `user`; returns the row and the key, which is never shown again."""
    name = name.strip()
    if len(name) > 100:
        raise ApplicationError("A token name is at most 100 characters.")
    now = now or timezone.now()
    key = TOKEN_PREFIX + secrets.token_urlsafe(32)
    days = settings.ISARD_API_TOKEN_DAYS
    token = ApiToken.objects.create(
        user=user,
        name=name,
        key_hash=hash_key(key),
        prefix=key[: len(TOKEN_PREFIX) + 6],
        created_at=now,
        expires_at=now + timedelta(days=days) if days > 0 else None,
    )
    return token, key


def api_token_revoke(*, actor: User, token_id: int) -> None:
    """Delete one of the actor's own tokens; someone else's is "not found"."""
    deleted, _ = ApiToken.objects.filter(pk=token_id, user=actor).delete()
    if not deleted:
        raise NotFoundError("No such token.")


def api_token_user(*, key: str, now: datetime | None = None) -> tuple[User, ApiToken] | None:
    """The active person a key belongs to (and its row), or None if it opens nothing."""
    if not key.startswith(TOKEN_PREFIX):
        return None
    now = now or timezone.now()
    token = ApiToken.objects.select_related("user").filter(key_hash=hash_key(key)).first()
    if token is None or (token.expires_at is not None and token.expires_at <= now):
        return None
    if not token.user.is_active:
        return None
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token.user, token
