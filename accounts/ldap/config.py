"""What a directory is: the `ISARD_LDAP_*` settings, or a school's own `SchoolDirectory`,
as one `LdapConfig` value.

Read when a login or a sync starts, so a changed setting applies at once. Also the two
rules both the login and the group sync follow: DNs compared in one spelling, and the
highest role group wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import ldap
import ldap.dn
from django.conf import settings
from django_auth_ldap.config import (
    LDAPGroupType,
    LDAPSearch,
    NestedActiveDirectoryGroupType,
    NestedGroupOfNamesType,
    NestedGroupOfUniqueNamesType,
    PosixGroupType,
)

from accounts.choices import Role
from accounts.models import SchoolDirectory

GROUP_OF_NAMES = "groupOfNames"


GROUP_OF_UNIQUE_NAMES = "groupOfUniqueNames"  # members in `uniqueMember` (older directories)


POSIX_GROUP = "posixGroup"


ACTIVE_DIRECTORY_GROUP = "group"  # Active Directory's groups, members in `member`


GROUP_TYPES = (GROUP_OF_NAMES, GROUP_OF_UNIQUE_NAMES, POSIX_GROUP, ACTIVE_DIRECTORY_GROUP)


#: Highest first: someone in several role groups gets the first of these.
ROLES_BY_RANK = (Role.ADMIN, Role.MANAGER, Role.TEACHER, Role.STUDENT)


#: The roles that may teach a course.
TEACHING_ROLES = (Role.ADMIN, Role.MANAGER, Role.TEACHER)


@dataclass(frozen=True)
class LdapConfig:
    """The `ISARD_LDAP_*` settings, as one value."""

    server_uri: str = ""
    bind_dn: str = ""
    bind_password: str = ""
    user_search_base: str = ""
    user_filter: str = "(uid=%(user)s)"
    username_attribute: str = "uid"
    group_search_base: str = ""
    group_type: str = GROUP_OF_NAMES
    start_tls: bool = False
    ca_cert_file: str = ""
    role_groups: Mapping[str, str] = field(default_factory=dict)
    first_name_attribute: str = "givenName"
    last_name_attribute: str = "sn"
    email_attribute: str = "mail"
    timeout: float = 5.0
    school_slug: str = ""
    #: The `SchoolDirectory` this is; None for the platform's (`ISARD_LDAP_*`).
    directory_id: int | None = None

    @classmethod
    def from_directory(cls, directory: SchoolDirectory) -> LdapConfig:
        """A school's own directory, with its own attribute names."""
        return cls(
            server_uri=directory.server_uri if directory.enabled else "",
            bind_dn=directory.bind_dn,
            bind_password=directory.bind_password,
            user_search_base=directory.user_search_base,
            user_filter=directory.user_filter,
            username_attribute=directory.username_attribute,
            group_search_base=directory.group_search_base,
            group_type=directory.group_type,
            start_tls=directory.start_tls,
            ca_cert_file=directory.ca_cert_file,
            # A school's directory never makes platform administrators.
            role_groups={
                role: dn for role, dn in dict(directory.role_groups).items() if role != Role.ADMIN
            },
            first_name_attribute=directory.first_name_attribute,
            last_name_attribute=directory.last_name_attribute,
            email_attribute=directory.email_attribute,
            timeout=float(directory.timeout_seconds),
            school_slug=directory.school.slug,
            directory_id=directory.pk,
        )

    @property
    def label(self) -> str:
        """Which directory, for messages."""
        if self.directory_id is None:
            return f"the LDAP directory {self.server_uri}"
        return f"the LDAP directory {self.server_uri} of the school “{self.school_slug}”"

    def setting_name(self, setting: str, field: str) -> str:
        """Where a value is set: `ISARD_LDAP_<setting>`, or the school directory's field."""
        if self.directory_id is None:
            return f"ISARD_LDAP_{setting}"
        return f"the {field} of the school's directory (admin)"

    @classmethod
    def from_settings(cls) -> LdapConfig:
        return cls(
            server_uri=settings.ISARD_LDAP_SERVER_URI,
            bind_dn=settings.ISARD_LDAP_BIND_DN,
            bind_password=settings.ISARD_LDAP_BIND_PASSWORD,
            user_search_base=settings.ISARD_LDAP_USER_SEARCH_BASE,
            user_filter=settings.ISARD_LDAP_USER_FILTER,
            username_attribute=settings.ISARD_LDAP_USERNAME_ATTRIBUTE,
            group_search_base=settings.ISARD_LDAP_GROUP_SEARCH_BASE,
            group_type=settings.ISARD_LDAP_GROUP_TYPE,
            start_tls=settings.ISARD_LDAP_START_TLS,
            ca_cert_file=settings.ISARD_LDAP_CA_CERT_FILE,
            role_groups=dict(settings.ISARD_LDAP_ROLE_GROUPS),
            first_name_attribute=settings.ISARD_LDAP_ATTRIBUTE_FIRST_NAME,
            last_name_attribute=settings.ISARD_LDAP_ATTRIBUTE_LAST_NAME,
            email_attribute=settings.ISARD_LDAP_ATTRIBUTE_EMAIL,
            timeout=float(settings.ISARD_LDAP_TIMEOUT),
            school_slug=settings.ISARD_LDAP_SCHOOL,
        )

    @property
    def enabled(self) -> bool:
        return bool(self.server_uri)

    @property
    def people_filter(self) -> str:
        """The login filter with any name: everyone who could log in."""
        return self.user_filter % {"user": "*"}

    def connection_options(self) -> dict[int, Any]:
        options: dict[int, Any] = {
            ldap.OPT_PROTOCOL_VERSION: ldap.VERSION3,
            ldap.OPT_REFERRALS: 0,
            # Connecting, and then waiting for each answer: without both, a directory
            # that accepts the connection but never answers would hold a login forever.
            ldap.OPT_NETWORK_TIMEOUT: self.timeout,
            ldap.OPT_TIMEOUT: self.timeout,
        }
        if self.ca_cert_file:
            options[ldap.OPT_X_TLS_CACERTFILE] = self.ca_cert_file
            options[ldap.OPT_X_TLS_REQUIRE_CERT] = ldap.OPT_X_TLS_DEMAND
            # Must come last: applies the TLS options above to this connection.
            options[ldap.OPT_X_TLS_NEWCTX] = 0
        return options

    def attribute_map(self) -> dict[str, str]:
        """User field -> directory attribute, for the fields that have one."""
        pairs = {
            "first_name": self.first_name_attribute,
            "last_name": self.last_name_attribute,
            "email": self.email_attribute,
        }
        return {name: attribute for name, attribute in pairs.items() if attribute}

    def auth_ldap_settings(self) -> dict[str, Any]:
        """django-auth-ldap's settings (names without `AUTH_LDAP_`)."""
        object_class = self.group_type if self.group_type in GROUP_TYPES else GROUP_OF_NAMES
        # The nested kinds follow groups listed in groups (a "teachers" group listing the
        # science teachers' group), as the group sync does.
        group_types: dict[str, LDAPGroupType] = {
            GROUP_OF_NAMES: NestedGroupOfNamesType(),
            GROUP_OF_UNIQUE_NAMES: NestedGroupOfUniqueNamesType(),
            POSIX_GROUP: PosixGroupType(),
            ACTIVE_DIRECTORY_GROUP: NestedActiveDirectoryGroupType(),
        }
        return {
            "SERVER_URI": self.server_uri,
            "BIND_DN": self.bind_dn,
            "BIND_PASSWORD": self.bind_password,
            "START_TLS": self.start_tls,
            "CONNECTION_OPTIONS": self.connection_options(),
            "USER_SEARCH": LDAPSearch(self.user_search_base, ldap.SCOPE_SUBTREE, self.user_filter),
            "USER_ATTR_MAP": self.attribute_map(),
            "ALWAYS_UPDATE_USER": True,
            "GROUP_SEARCH": (
                LDAPSearch(
                    self.group_search_base, ldap.SCOPE_SUBTREE, f"(objectClass={object_class})"
                )
                if self.group_search_base
                else None
            ),
            "GROUP_TYPE": group_types[object_class],
        }


def normalize_dn(dn: str) -> str:
    """A DN in one spelling (case, spaces around separators), to compare DNs."""
    try:
        return str(ldap.dn.dn2str(ldap.dn.str2dn(dn.strip()))).lower()
    except ldap.DECODING_ERROR:
        return dn.strip().lower()


def highest_role(group_dns: Iterable[str], role_groups: Mapping[str, str]) -> Role:
    """The highest role whose group is among `group_dns`; student when none is."""
    member_of = {normalize_dn(dn) for dn in group_dns}
    for role in ROLES_BY_RANK:
        group_dn = role_groups.get(role.value)
        if group_dn and normalize_dn(group_dn) in member_of:
            return role
    return Role.STUDENT


def at_least(role: str, minimum: Role) -> Role:
    """`role`, raised to `minimum` if it ranks below it."""
    current = Role(role)
    return minimum if ROLES_BY_RANK.index(current) > ROLES_BY_RANK.index(minimum) else current
