"""The school's LDAP directory: configuration, reads for the group sync, and login.

The only module that imports `ldap`. Everything is configured by the `ISARD_LDAP_*`
settings (`isard/settings_ldap.py`), read when a login or a sync starts, so a changed
setting applies at once:

- `IsardLDAPBackend` is django-auth-ldap configured from those settings. It binds as the
  person to check the password, copies names and e-mail, sets the role from the role
  groups (the highest wins) and refuses disabled accounts. When the directory does not
  answer within `ISARD_LDAP_TIMEOUT` it logs why and lets the next backend (local
  accounts) try.
- `read_directory` reads everything the group sync needs in one connection: every person
  under the search base (paged, so a server's size limit does not cut the list short) and
  each mapped group, groupOfNames, groupOfUniqueNames or posixGroup as each entry says.
  Entries that cannot be used (a member that does not exist, a person without a login
  name...) are returned as `BrokenEntry` items to report, never raised.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ldap
import ldap.dn
from django.conf import settings
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core import checks
from django.core.exceptions import ValidationError
from django.dispatch import receiver
from django_auth_ldap.backend import LDAPBackend, ldap_error, populate_user
from django_auth_ldap.config import (
    GroupOfNamesType,
    GroupOfUniqueNamesType,
    LDAPGroupType,
    LDAPSearch,
    PosixGroupType,
)
from ldap.controls import SimplePagedResultsControl

from accounts.choices import Role
from accounts.models import LdapAccount, School, SchoolDirectory, User
from isard.core.errors import InfrastructureError

logger = logging.getLogger(__name__)

GROUP_OF_NAMES = "groupOfNames"
GROUP_OF_UNIQUE_NAMES = "groupOfUniqueNames"  # members in `uniqueMember` (older directories)
POSIX_GROUP = "posixGroup"
GROUP_TYPES = (GROUP_OF_NAMES, GROUP_OF_UNIQUE_NAMES, POSIX_GROUP)
#: Highest first: someone in several role groups gets the first of these.
ROLES_BY_RANK = (Role.ADMIN, Role.MANAGER, Role.TEACHER, Role.STUDENT)
#: Entries per page; below the usual server limits (OpenLDAP 500, Active Directory 1000).
PAGE_SIZE = 100
USERNAME_MAX_LENGTH = 150
GROUP_ATTRIBUTES = ["objectClass", "member", "uniqueMember", "memberUid", "gidNumber"]
UNREACHABLE_ERRORS = (ldap.SERVER_DOWN, ldap.TIMEOUT, ldap.CONNECT_ERROR)


class DirectoryError(InfrastructureError):
    """The directory refused a request, or is configured wrongly."""


class DirectoryUnreachableError(DirectoryError):
    """The directory did not answer (down, unreachable, too slow, or TLS failed)."""


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
        """A school's own directory, with the platform's attribute names."""
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
            first_name_attribute=settings.ISARD_LDAP_ATTRIBUTE_FIRST_NAME,
            last_name_attribute=settings.ISARD_LDAP_ATTRIBUTE_LAST_NAME,
            email_attribute=settings.ISARD_LDAP_ATTRIBUTE_EMAIL,
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
        group_types: dict[str, LDAPGroupType] = {
            GROUP_OF_NAMES: GroupOfNamesType(),
            GROUP_OF_UNIQUE_NAMES: GroupOfUniqueNamesType(),
            POSIX_GROUP: PosixGroupType(),
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


def describe_ldap_error(error: Exception) -> str:
    """python-ldap puts `{"desc": ..., "info": ...}` in args; make one readable line."""
    details = error.args[0] if error.args and isinstance(error.args[0], dict) else {}
    description = details.get("desc") or type(error).__name__
    info = details.get("info")
    return f"{description} ({info})" if info else str(description)


def highest_role(group_dns: Iterable[str], role_groups: Mapping[str, str]) -> Role:
    """The highest role whose group is among `group_dns`; student when none is."""
    member_of = {normalize_dn(dn) for dn in group_dns}
    for role in ROLES_BY_RANK:
        group_dn = role_groups.get(role.value)
        if group_dn and normalize_dn(group_dn) in member_of:
            return role
    return Role.STUDENT


# --- connections and reads ----------------------------------------------------------------


@contextmanager
def open_connection(config: LdapConfig) -> Iterator[Any]:
    """A connection bound as the service account; LDAP errors become `DirectoryError`."""
    connection = ldap.initialize(config.server_uri)
    try:
        for option, value in config.connection_options().items():
            connection.set_option(option, value)
        if config.start_tls:
            connection.start_tls_s()
        connection.simple_bind_s(config.bind_dn, config.bind_password)
        yield connection
    except UNREACHABLE_ERRORS as error:
        raise DirectoryUnreachableError(
            f"{config.label[0].upper()}{config.label[1:]} does not answer: "
            f"{describe_ldap_error(error)}. Check "
            f"{config.setting_name('SERVER_URI', 'server URI')}, the network and the TLS "
            "settings.",
            extra={"server": config.server_uri},
        ) from error
    except ldap.INVALID_CREDENTIALS as error:
        raise DirectoryError(
            f"{config.label[0].upper()}{config.label[1:]} refused the service account "
            f"“{config.bind_dn}”: check {config.setting_name('BIND_DN', 'bind DN')} and "
            f"{config.setting_name('BIND_PASSWORD', 'bind password')}.",
            extra={"server": config.server_uri},
        ) from error
    except ldap.LDAPError as error:
        raise DirectoryError(
            f"The LDAP directory {config.server_uri} answered with an error: "
            f"{describe_ldap_error(error)}.",
            extra={"server": config.server_uri},
        ) from error
    finally:
        with suppress(ldap.LDAPError):
            connection.unbind_s()


def paged_search(
    connection: Any, base: str, filterstr: str, attributes: list[str]
) -> Iterator[tuple[str, dict[str, list[bytes]]]]:
    """Subtree search in pages, with attribute names in lower case."""
    control = SimplePagedResultsControl(criticality=True, size=PAGE_SIZE, cookie=b"")
    while True:
        message_id = connection.search_ext(
            base, ldap.SCOPE_SUBTREE, filterstr, attributes, serverctrls=[control]
        )
        _type, entries, _id, response_controls = connection.result3(message_id)
        for dn, entry_attributes in entries:
            if dn is not None:  # referrals have no DN
                yield dn, {name.lower(): values for name, values in entry_attributes.items()}
        control.cookie = next(
            (
                response.cookie
                for response in response_controls
                if response.controlType == SimplePagedResultsControl.controlType
            ),
            b"",
        )
        if not control.cookie:
            return


def read_entry(connection: Any, dn: str, attributes: list[str]) -> dict[str, list[bytes]] | None:
    """One entry's attributes (names in lower case), or None if it does not exist."""
    try:
        found = connection.search_s(dn, ldap.SCOPE_BASE, "(objectClass=*)", attributes)
    except (ldap.NO_SUCH_OBJECT, ldap.INVALID_DN_SYNTAX):
        return None
    for entry_dn, entry_attributes in found:
        if entry_dn is not None:
            return {name.lower(): values for name, values in entry_attributes.items()}
    return None


def first_text(attributes: Mapping[str, list[bytes]], name: str) -> str:
    values = attributes.get(name.lower()) or [b""]
    return values[0].decode("utf-8", errors="replace").strip()


@dataclass(frozen=True)
class DirectoryPerson:
    dn: str
    username: str
    first_name: str
    last_name: str
    email: str


@dataclass(frozen=True)
class BrokenEntry:
    """A directory entry the sync could not use, and why."""

    dn: str
    reason: str

    def __str__(self) -> str:
        return f"{self.dn}: {self.reason}"


@dataclass(frozen=True)
class DirectoryGroup:
    dn: str
    kind: str
    #: Usernames of the members that are people under the search base.
    members: frozenset[str]
    #: Member values listed, usable or not (to tell an empty group from a wrong search base).
    listed: int


@dataclass
class DirectorySnapshot:
    """What the group sync needs from the directory, read in one go."""

    people: dict[str, DirectoryPerson] = field(default_factory=dict)
    #: By normalized DN; groups that could not be read are missing here and in `broken`.
    groups: dict[str, DirectoryGroup] = field(default_factory=dict)
    broken: list[BrokenEntry] = field(default_factory=list)

    def group(self, dn: str) -> DirectoryGroup | None:
        return self.groups.get(normalize_dn(dn))


def read_directory(*, config: LdapConfig, group_dns: Iterable[str]) -> DirectorySnapshot:
    """Every person under the user search base, and the groups `group_dns` with members."""
    snapshot = DirectorySnapshot()
    with open_connection(config) as connection:
        people_by_dn, people_by_gid = read_people(connection, config, snapshot)
        skipped_people = {normalize_dn(entry.dn) for entry in snapshot.broken}
        # Member DNs that are not people, by normalized DN: (as first spelled, groups).
        unresolved: dict[str, tuple[str, list[str]]] = {}
        for group_dn in dict.fromkeys(group_dns):
            group = read_group(connection, group_dn, snapshot, people_by_dn, people_by_gid)
            if group is None:
                continue
            snapshot.groups[normalize_dn(group_dn)] = group[0]
            for member_dn in group[1]:
                unresolved.setdefault(normalize_dn(member_dn), (member_dn, []))[1].append(group_dn)
        for normalized, (member_dn, in_groups) in unresolved.items():
            if normalized in skipped_people:
                reason = "the member was skipped (see its own entry)"
            else:
                reason = explain_unresolved_member(connection, config, member_dn)
            snapshot.broken.append(
                BrokenEntry(member_dn, f"{reason}; listed in {', '.join(in_groups)}")
            )
    return snapshot


def read_people(
    connection: Any, config: LdapConfig, snapshot: DirectorySnapshot
) -> tuple[dict[str, DirectoryPerson], dict[str, set[str]]]:
    """Fill `snapshot.people`; return them by normalized DN and usernames by gidNumber."""
    attribute_map = config.attribute_map()
    attributes = [config.username_attribute, *attribute_map.values(), "gidNumber"]
    by_dn: dict[str, DirectoryPerson] = {}
    by_gid: dict[str, set[str]] = defaultdict(set)
    validate_username = UnicodeUsernameValidator()
    try:
        entries = list(
            paged_search(connection, config.user_search_base, config.people_filter, attributes)
        )
    except ldap.NO_SUCH_OBJECT as error:
        raise DirectoryError(
            f"ISARD_LDAP_USER_SEARCH_BASE “{config.user_search_base}” does not exist in the "
            "directory.",
            extra={"server": config.server_uri},
        ) from error
    for dn, attributes_found in entries:
        username = first_text(attributes_found, config.username_attribute).lower()
        if not username:
            snapshot.broken.append(BrokenEntry(dn, f"has no {config.username_attribute}"))
            continue
        try:
            validate_username(username)
            if len(username) > USERNAME_MAX_LENGTH:
                raise ValidationError("too long")
        except ValidationError:
            snapshot.broken.append(
                BrokenEntry(dn, f"{config.username_attribute} “{username}” is not a valid username")
            )
            continue
        if username in snapshot.people:
            snapshot.broken.append(
                BrokenEntry(
                    dn,
                    f"{config.username_attribute} “{username}” is also used by "
                    f"{snapshot.people[username].dn}",
                )
            )
            continue
        person = DirectoryPerson(
            dn=dn,
            username=username,
            first_name=first_text(attributes_found, attribute_map.get("first_name", "")),
            last_name=first_text(attributes_found, attribute_map.get("last_name", "")),
            email=first_text(attributes_found, attribute_map.get("email", "")),
        )
        snapshot.people[username] = person
        by_dn[normalize_dn(dn)] = person
        if gid := first_text(attributes_found, "gidNumber"):
            by_gid[gid].add(username)
    return by_dn, by_gid


def read_group(
    connection: Any,
    group_dn: str,
    snapshot: DirectorySnapshot,
    people_by_dn: Mapping[str, DirectoryPerson],
    people_by_gid: Mapping[str, set[str]],
) -> tuple[DirectoryGroup, list[str]] | None:
    """The group and the member DNs that are not people; None (and reported) if unusable.

    posixGroup members are the memberUid values plus everyone whose primary group
    (gidNumber) it is, as django-auth-ldap counts them at login. groupOfNames (and
    groupOfUniqueNames) members are DNs.
    """
    entry = read_entry(connection, group_dn, GROUP_ATTRIBUTES)
    if entry is None:
        snapshot.broken.append(BrokenEntry(group_dn, "the group does not exist"))
        return None
    classes = {value.decode().lower() for value in entry.get("objectclass", [])}
    is_posix = "posixgroup" in classes
    is_dn_list = bool(classes & {"groupofnames", "groupofuniquenames"})
    if not (is_posix or is_dn_list):
        snapshot.broken.append(
            BrokenEntry(group_dn, "is not a groupOfNames, groupOfUniqueNames or posixGroup")
        )
        return None
    members: set[str] = set()
    unresolved: list[str] = []
    listed = 0
    if is_posix:
        for raw_uid in entry.get("memberuid", []):
            listed += 1
            uid = raw_uid.decode("utf-8", errors="replace").strip().lower()
            if uid in snapshot.people:
                members.add(uid)
            else:
                snapshot.broken.append(
                    BrokenEntry(
                        group_dn, f"memberUid “{uid}” is not a person under the search base"
                    )
                )
        members |= people_by_gid.get(first_text(entry, "gidNumber"), set())
    own_dn = normalize_dn(group_dn)
    for raw_dn in [*entry.get("member", []), *entry.get("uniquemember", [])]:
        member_dn = raw_dn.decode("utf-8", errors="replace")
        normalized = normalize_dn(member_dn)
        if normalized == own_dn:  # the usual placeholder that keeps a groupOfNames valid
            continue
        listed += 1
        person = people_by_dn.get(normalized)
        if person is not None:
            members.add(person.username)
        else:
            unresolved.append(member_dn)
    kind = POSIX_GROUP if is_posix else GROUP_OF_NAMES
    return DirectoryGroup(group_dn, kind, frozenset(members), listed), unresolved


def explain_unresolved_member(connection: Any, config: LdapConfig, member_dn: str) -> str:
    entry = read_entry(connection, member_dn, ["objectClass", config.username_attribute])
    if entry is None:
        return "the member does not exist"
    classes = {value.decode().lower() for value in entry.get("objectclass", [])}
    if classes & {"groupofnames", "groupofuniquenames", "posixgroup"}:
        return "the member is a group; nested groups are not followed"
    if not entry.get(config.username_attribute.lower()):
        return f"the member has no {config.username_attribute}"
    return f"the member is not found by {config.user_filter} under {config.user_search_base}"


# --- login --------------------------------------------------------------------------------


#: The directory a login is trying now, for the error log (django-auth-ldap's signals do
#: not say which backend instance sent them).
current_config: ContextVar[LdapConfig | None] = ContextVar("current_ldap_config", default=None)


def school_directory_configs() -> list[LdapConfig]:
    """Every enabled school directory, as configurations."""
    return [
        LdapConfig.from_directory(directory)
        for directory in SchoolDirectory.objects.filter(enabled=True)
        .select_related("school")
        .order_by("pk")
    ]


def login_configs(username: str) -> list[LdapConfig]:
    """The directories that may sign `username` in, in order.

    Someone already linked to a directory signs in with that one only, and someone of a
    school with its own directory with that one: a name in two directories never
    reaches the wrong person. A new name tries the platform's directory, then each
    school's; the first that knows the name and password makes the person.
    """
    platform = LdapConfig.from_settings()
    user = (
        User.objects.filter(username__iexact=username).select_related("school__directory").first()
    )
    if user is not None:
        account = LdapAccount.objects.filter(user=user).select_related("directory__school")
        linked = account.first()
        if linked is not None:
            if linked.directory is None:
                return [platform] if platform.enabled else []
            config = LdapConfig.from_directory(linked.directory)
            return [config] if config.enabled else []
        school_directory = getattr(user.school, "directory", None) if user.school else None
        if school_directory is not None and school_directory.enabled:
            return [LdapConfig.from_directory(school_directory)]
        return [platform] if platform.enabled else []
    return [config for config in (platform, *school_directory_configs()) if config.enabled]


class IsardLDAPBackend(LDAPBackend):
    """django-auth-ldap, configured from the `ISARD_LDAP_*` settings and the schools' own
    directories (`SchoolDirectory`).

    Django makes a new backend for every login, and django-auth-ldap reads its settings
    when first asked, so each login sees the current settings. `AUTH_LDAP_*` settings
    still override single values. For each directory `login_configs` allows, the backend
    switches its configuration and tries; the first that signs the person in wins.
    """

    _config: LdapConfig | None = None

    @property
    def config(self) -> LdapConfig:
        if self._config is None:
            self._config = LdapConfig.from_settings()
        return self._config

    @property
    def default_settings(self) -> dict[str, Any]:
        return self.config.auth_ldap_settings()

    def authenticate(
        self,
        request: Any,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> User | None:
        if not username or not password:
            return None
        for config in login_configs(username):
            self._config = config
            self._settings = None  # django-auth-ldap builds them again from this config
            token = current_config.set(config)
            try:
                user = super().authenticate(request, username=username, password=password, **kwargs)
            finally:
                current_config.reset(token)
            if user is not None:
                return user
        return None

    def authenticate_ldap_user(self, ldap_user: Any, password: str) -> User | None:
        from accounts.services import ldap_account_link

        user: User | None = super().authenticate_ldap_user(ldap_user, password)
        if user is None:
            return None
        if not user.is_active:
            # django-auth-ldap does not check this itself.
            logger.info("refused the directory login of %s: the account is disabled", user)
            return None
        ldap_account_link(user=user, dn=ldap_user.dn, directory_id=self.config.directory_id)
        return user


@receiver(populate_user, sender=IsardLDAPBackend)
def apply_directory_role(sender: Any, user: User, ldap_user: Any, **kwargs: Any) -> None:
    """Before the user is saved at login: role from the role groups, school if none."""
    config: LdapConfig = ldap_user.backend.config
    if config.role_groups:
        if config.group_search_base:
            user.role = highest_role(ldap_user.group_dns, config.role_groups)
        else:
            logger.error(
                "ISARD_LDAP_ROLE_GROUPS is set but ISARD_LDAP_GROUP_SEARCH_BASE is empty: "
                "the role of %s was left as %s",
                user.username,
                user.role,
            )
    if user.school_id is None and config.school_slug:
        user.school = School.objects.filter(slug=config.school_slug).first()


@receiver(ldap_error, sender=IsardLDAPBackend)
def log_directory_error(
    sender: Any, context: str, user: Any, request: Any, exception: Exception, **kwargs: Any
) -> None:
    config = current_config.get() or LdapConfig.from_settings()
    uri = config.server_uri
    if isinstance(exception, UNREACHABLE_ERRORS):
        logger.error(
            "The LDAP directory %s is unreachable (%s) while %s; trying local accounts.",
            uri,
            describe_ldap_error(exception),
            context,
        )
    else:
        logger.error(
            "The LDAP directory %s answered with an error while %s: %s",
            uri,
            context,
            describe_ldap_error(exception),
        )


# --- configuration checks -------------------------------------------------------------------

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
