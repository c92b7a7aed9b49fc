"""The accounts' tasks: each task's name is spelled here and only here."""

from __future__ import annotations

LDAP_SYNC = "accounts.tasks.ldap_sync_task"
