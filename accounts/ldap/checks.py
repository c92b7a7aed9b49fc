"""System checks of the LDAP settings: values that cannot work are caught at start
instead of at the first login, and at run time (`isard_runtime`, deploy) the directory
must answer and accept the service account.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core import checks

from accounts.choices import Role
from accounts.ldap.client import DirectoryError, open_connection
from accounts.ldap.config import GROUP_TYPES, LdapConfig

RUNTIME_TAG = "isard_runtime"


@checks.register()
def check_ldap_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Settings that cannot work, caught at start instead of at the first login."""
    config = LdapConfig.from_settings()
    errors: list[checks.CheckMessage] = []
    if config.group_type not in GROUP_TYPES:
        errors.append(
            checks.Error(
                f"ISARD_LDAP_GROUP_TYPE={config.group_type!r} is not one of "
                f"{', '.join(GROUP_TYPES)}.",
                id="accounts.E101",
            )
        )
    unknown = sorted(set(config.role_groups) - set(Role.values))
    if unknown:
        errors.append(
            checks.Error(
                f"ISARD_LDAP_ROLE_GROUPS names unknown roles ({', '.join(unknown)}); the roles "
                f"are {', '.join(Role.values)}.",
                id="accounts.E102",
            )
        )
    if not config.enabled:
        return errors
    if not config.server_uri.startswith(("ldap://", "ldaps://", "ldapi://")):
        errors.append(
            checks.Error(
                f"ISARD_LDAP_SERVER_URI={config.server_uri!r} must start with ldap://, "
                "ldaps:// or ldapi://.",
                id="accounts.E103",
            )
        )
    if config.start_tls and config.server_uri.startswith("ldaps://"):
        errors.append(
            checks.Error(
                "ISARD_LDAP_START_TLS is set with an ldaps:// URI, which is already encrypted: "
                "use one or the other.",
                id="accounts.E104",
            )
        )
    if not config.user_search_base:
        errors.append(
            checks.Error(
                "ISARD_LDAP_USER_SEARCH_BASE is empty: set the DN under which people are.",
                id="accounts.E105",
            )
        )
    if "%(user)s" not in config.user_filter:
        errors.append(
            checks.Error(
                f"ISARD_LDAP_USER_FILTER={config.user_filter!r} must contain %(user)s.",
                id="accounts.E106",
            )
        )
    if config.role_groups and not config.group_search_base:
        errors.append(
            checks.Error(
                "ISARD_LDAP_ROLE_GROUPS needs ISARD_LDAP_GROUP_SEARCH_BASE (where login "
                "looks for a person's groups).",
                id="accounts.E107",
            )
        )
    if config.ca_cert_file and not Path(config.ca_cert_file).is_file():
        errors.append(
            checks.Error(
                f"ISARD_LDAP_CA_CERT_FILE={config.ca_cert_file} does not exist.",
                id="accounts.E108",
            )
        )
    return errors


@checks.register(RUNTIME_TAG, deploy=True)
def check_ldap_directory(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The directory answers and accepts the service account (when LDAP is on)."""
    config = LdapConfig.from_settings()
    if not config.enabled:
        return []
    try:
        with open_connection(config):
            pass
    except DirectoryError as error:
        return [checks.Error(error.message, id="accounts.E109")]
    return []
