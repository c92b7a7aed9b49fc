"""Celery tasks of people and courses: take ids, call one service."""

from __future__ import annotations

import logging

from celery import shared_task

from accounts import task_calls
from accounts.ldap.client import DirectoryUnreachableError
from accounts.ldap.config import LdapConfig
from accounts.ldap.sync import ldap_sync
from accounts.models import SchoolDirectory, User

logger = logging.getLogger(__name__)


@shared_task(
    name=task_calls.LDAP_SYNC,
    autoretry_for=(DirectoryUnreachableError,),
    retry_backoff=60,
    retry_jitter=True,
    max_retries=3,
)
def ldap_sync_task(actor_id: int | None = None) -> dict[str, int]:
    """Run the LDAP group sync (periodically, or for an administrator) and return counts.

    Safe to run twice: the sync compares against the database each time. Only an
    unreachable directory is retried; a refused service account or a broken mapping
    will not fix itself. Without any directory (the platform's or a school's) the
    periodic run does nothing.
    """
    if (
        not LdapConfig.from_settings().enabled
        and not SchoolDirectory.objects.filter(enabled=True).exists()
    ):
        logger.info("LDAP group sync skipped: ISARD_LDAP_SERVER_URI is empty, no school directory")
        return {}
    actor = User.objects.get(pk=actor_id) if actor_id is not None else None
    return ldap_sync(actor=actor).counts()
