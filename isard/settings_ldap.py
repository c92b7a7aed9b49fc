"""LDAP settings, read from the environment. Empty: only local accounts."""

from __future__ import annotations
