"""LDAP settings, read from the environment. Empty: only local accounts.

Only `ISARD_LDAP_*` values live here; `accounts.ldap.config` turns them into
django-auth-ldap's configuration when a login happens and into the group sync's reads,
so both always agree and a test can change one setting at a time. Anything more exotic can
still be set with django-auth-ldap's own `AUTH_LDAP_*` names, which win over these.
`accounts.ldap.checks` registers system checks for values that make no sense.
"""

from __future__ import annotations

import environ
from django.core.exceptions import ImproperlyConfigured

from accounts.ldap.syntax import parse_role_groups

__all__ = [
    "AUTHENTICATION_BACKENDS",
    "ISARD_LDAP_ATTRIBUTE_EMAIL",
    "ISARD_LDAP_ATTRIBUTE_FIRST_NAME",
    "ISARD_LDAP_ATTRIBUTE_LAST_NAME",
    "ISARD_LDAP_BIND_DN",
    "ISARD_LDAP_BIND_PASSWORD",
    "ISARD_LDAP_CA_CERT_FILE",
    "ISARD_LDAP_GROUP_SEARCH_BASE",
    "ISARD_LDAP_GROUP_TYPE",
    "ISARD_LDAP_ROLE_GROUPS",
    "ISARD_LDAP_SCHOOL",
    "ISARD_LDAP_SERVER_URI",
    "ISARD_LDAP_START_TLS",
    "ISARD_LDAP_SYNC_INTERVAL_SECONDS",
    "ISARD_LDAP_TIMEOUT",
    "ISARD_LDAP_USERNAME_ATTRIBUTE",
    "ISARD_LDAP_USER_FILTER",
    "ISARD_LDAP_USER_SEARCH_BASE",
]

env = environ.Env()


def role_groups_setting(value: str) -> dict[str, str]:
    """`ISARD_LDAP_ROLE_GROUPS`, in the format a school directory's form takes too."""
    try:
        return parse_role_groups(value)
    except ValueError as error:
        raise ImproperlyConfigured(f"ISARD_LDAP_ROLE_GROUPS: {error}") from error


# ldap://host, ldaps://host:636 (LDAPS), or empty for local accounts only.
ISARD_LDAP_SERVER_URI = env.str("ISARD_LDAP_SERVER_URI", default="")
# The service account that searches for people and groups (empty: anonymous).
ISARD_LDAP_BIND_DN = env.str("ISARD_LDAP_BIND_DN", default="")
ISARD_LDAP_BIND_PASSWORD = env.str("ISARD_LDAP_BIND_PASSWORD", default="")
ISARD_LDAP_USER_SEARCH_BASE = env.str("ISARD_LDAP_USER_SEARCH_BASE", default="")
# `%(user)s` is the login name; the group sync lists people with it replaced by `*`.
ISARD_LDAP_USER_FILTER = env.str("ISARD_LDAP_USER_FILTER", default="(uid=%(user)s)")
# The attribute that holds the login name (uid; sAMAccountName on Active Directory).
ISARD_LDAP_USERNAME_ATTRIBUTE = env.str("ISARD_LDAP_USERNAME_ATTRIBUTE", default="uid")
ISARD_LDAP_GROUP_SEARCH_BASE = env.str("ISARD_LDAP_GROUP_SEARCH_BASE", default="")
# How login finds a person's role groups: groupOfNames, groupOfUniqueNames, posixGroup or
# group (Active Directory).
# (The group sync recognises every kind from each group's objectClass.)
ISARD_LDAP_GROUP_TYPE = env.str("ISARD_LDAP_GROUP_TYPE", default="groupOfNames")
ISARD_LDAP_START_TLS = env.bool("ISARD_LDAP_START_TLS", default=False)
# The CA that signed the directory's certificate, for StartTLS and ldaps:// (empty: the
# system's CAs).
ISARD_LDAP_CA_CERT_FILE = env.str("ISARD_LDAP_CA_CERT_FILE", default="")
# role=group DN entries separated by ";" (or new lines), as a school directory's form
# takes them; the highest role among a person's groups wins, and people in none of them
# are students.
ISARD_LDAP_ROLE_GROUPS = role_groups_setting(env.str("ISARD_LDAP_ROLE_GROUPS", default=""))
ISARD_LDAP_ATTRIBUTE_FIRST_NAME = env.str("ISARD_LDAP_ATTRIBUTE_FIRST_NAME", default="givenName")
ISARD_LDAP_ATTRIBUTE_LAST_NAME = env.str("ISARD_LDAP_ATTRIBUTE_LAST_NAME", default="sn")
ISARD_LDAP_ATTRIBUTE_EMAIL = env.str("ISARD_LDAP_ATTRIBUTE_EMAIL", default="mail")
# Seconds to wait for the directory to connect and to answer: an unreachable directory
# must not hold a login (local accounts are tried next) or a sync for long.
ISARD_LDAP_TIMEOUT = env.float("ISARD_LDAP_TIMEOUT", default=5.0)
# Slug of the school that people get when their first directory login creates them.
ISARD_LDAP_SCHOOL = env.str("ISARD_LDAP_SCHOOL", default="")

# How often Celery beat runs the group sync (when LDAP is on and groups are mapped).
ISARD_LDAP_SYNC_INTERVAL_SECONDS = env.int("ISARD_LDAP_SYNC_INTERVAL_SECONDS", default=3600)

# The directories first (the platform's, from these settings, and the schools' own, set in
# the admin; without either it returns at once), then passwords kept by isard, unless the
# person's school turned local accounts off.
AUTHENTICATION_BACKENDS = [
    "accounts.ldap.backend.IsardLDAPBackend",
    "accounts.backends.LocalAccountBackend",
]
