"""Connections to a directory and the reads of the group sync.

`open_connection` binds as the service account and turns LDAP errors into
`DirectoryError` (`DirectoryUnreachableError` when the directory does not answer).
`read_directory` reads everything the group sync needs in one connection: every person
under the search base (paged, so a server's size limit does not cut the list short), with
the attributes the mappings name, the groups found by name (a naming rule's teachers'
groups) and each mapped group, groupOfNames, groupOfUniqueNames, posixGroup or Active
Directory's group as each entry says, with the members of the groups it lists. Entries that cannot
be used (a member that does not exist, a person without a login name...) are returned as
`BrokenEntry` items to report, never raised.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import ldap
import ldap.dn
import ldap.filter
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import ValidationError
from ldap.controls import SimplePagedResultsControl

from accounts.ldap.config import GROUP_OF_NAMES, POSIX_GROUP, LdapConfig, normalize_dn
from isard.core.errors import InfrastructureError

#: Entries per page; below the usual server limits (OpenLDAP 500, Active Directory 1000).
PAGE_SIZE = 100


USERNAME_MAX_LENGTH = 150


GROUP_ATTRIBUTES = ["objectClass", "member", "uniqueMember", "memberUid", "gidNumber"]


UNREACHABLE_ERRORS = (ldap.SERVER_DOWN, ldap.TIMEOUT, ldap.CONNECT_ERROR)


class DirectoryError(InfrastructureError):
    """The directory refused a request, or is configured wrongly."""


class DirectoryUnreachableError(DirectoryError):
    """The directory did not answer (down, unreachable, too slow, or TLS failed)."""


def describe_ldap_error(error: Exception) -> str:
    """python-ldap puts `{"desc": ..., "info": ...}` in args; make one readable line."""
    details = error.args[0] if error.args and isinstance(error.args[0], dict) else {}
    description = details.get("desc") or type(error).__name__
    info = details.get("info")
    return f"{description} ({info})" if info else str(description)


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
    #: The extra attributes asked for (lower-case name -> values in lower case).
    values: Mapping[str, frozenset[str]] = field(default_factory=dict, compare=False)

    def has_value(self, attribute: str, value: str) -> bool:
        return value.strip().lower() in self.values.get(attribute.lower(), frozenset())


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
    #: (normalized search base, name in lower case) -> DN, for the groups found by name.
    named_groups: dict[tuple[str, str], str] = field(default_factory=dict)

    def group(self, dn: str) -> DirectoryGroup | None:
        return self.groups.get(normalize_dn(dn))

    def group_named(self, base: str, name: str) -> str | None:
        """The DN of the group called `name` under `base`, if exactly one was found."""
        return self.named_groups.get((normalize_dn(base), name.lower()))


@dataclass(frozen=True)
class GroupName:
    """A group to find by its name (cn) under a search base."""

    base: str
    name: str


def read_directory(
    *,
    config: LdapConfig,
    group_dns: Iterable[str],
    person_attributes: Iterable[str] = (),
    group_names: Iterable[GroupName] = (),
) -> DirectorySnapshot:
    """Every person under the user search base (with `person_attributes` too), the groups
    named `group_names`, and the groups `group_dns` and those found by name, with members."""
    snapshot = DirectorySnapshot()
    with open_connection(config) as connection:
        people_by_dn, people_by_gid = read_people(
            connection, config, snapshot, sorted(set(person_attributes))
        )
        skipped_people = {normalize_dn(entry.dn) for entry in snapshot.broken}
        find_groups_by_name(connection, group_names, snapshot)
        # Member DNs that are not people, by normalized DN: (as first spelled, groups).
        unresolved: dict[str, tuple[str, list[str]]] = {}
        for group_dn in dict.fromkeys([*group_dns, *snapshot.named_groups.values()]):
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


#: The object classes of the groups a name may find.
GROUP_CLASSES_FILTER = (
    "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=posixGroup)"
    "(objectClass=group))"
)


def find_groups_by_name(
    connection: Any, group_names: Iterable[GroupName], snapshot: DirectorySnapshot
) -> None:
    """Fill `snapshot.named_groups`: one search per base for all its names (by cn).

    A name found twice under one base is reported and not used: a teachers' group must
    not be picked by chance. A base that does not exist is reported too.
    """
    names_by_base: dict[str, dict[str, str]] = defaultdict(dict)
    for wanted in group_names:
        names_by_base[wanted.base].setdefault(wanted.name.lower(), wanted.name)
    for base, names in names_by_base.items():
        alternatives = "".join(
            f"(cn={ldap.filter.escape_filter_chars(name)})" for name in names.values()
        )
        found: dict[str, list[str]] = defaultdict(list)
        try:
            for dn, attributes in paged_search(
                connection, base, f"(&{GROUP_CLASSES_FILTER}(|{alternatives}))", ["cn"]
            ):
                for raw_name in attributes.get("cn", []):
                    name = raw_name.decode("utf-8", errors="replace").strip().lower()
                    if name in names:
                        found[name].append(dn)
        except ldap.NO_SUCH_OBJECT:
            snapshot.broken.append(
                BrokenEntry(base, "does not exist: no teachers' group was looked for there")
            )
            continue
        for name, dns in found.items():
            if len(dns) > 1:
                snapshot.broken.append(
                    BrokenEntry(
                        base, f"{len(dns)} groups are named “{name}” ({'; '.join(dns)}): none used"
                    )
                )
                continue
            snapshot.named_groups[(normalize_dn(base), name)] = dns[0]


def read_people(
    connection: Any,
    config: LdapConfig,
    snapshot: DirectorySnapshot,
    extra_attributes: list[str],
) -> tuple[dict[str, DirectoryPerson], dict[str, set[str]]]:
    """Fill `snapshot.people`; return them by normalized DN and usernames by gidNumber."""
    attribute_map = config.attribute_map()
    attributes = [
        config.username_attribute,
        *attribute_map.values(),
        "gidNumber",
        *extra_attributes,
    ]
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
            values={
                name.lower(): frozenset(
                    value.decode("utf-8", errors="replace").strip().lower()
                    for value in attributes_found.get(name.lower(), [])
                )
                for name in extra_attributes
            },
        )
        snapshot.people[username] = person
        by_dn[normalize_dn(dn)] = person
        if gid := first_text(attributes_found, "gidNumber"):
            by_gid[gid].add(username)
    return by_dn, by_gid


#: Object classes of groups whose members are DNs, in lower case.
DN_LIST_CLASSES = frozenset({"groupofnames", "groupofuniquenames", "group"})


#: How deep groups listing groups are followed; deeper ones are reported, not read.
MAX_NESTING = 10


def group_classes(entry: Mapping[str, list[bytes]]) -> tuple[bool, bool]:
    """(is a posixGroup, lists its members as DNs) for an entry."""
    classes = {value.decode().lower() for value in entry.get("objectclass", [])}
    return "posixgroup" in classes, bool(classes & DN_LIST_CLASSES)


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
    groupOfUniqueNames, Active Directory's group) members are DNs; a member that is
    itself a group brings its own members, as a school's "year 1" group lists its
    classes.
    """
    entry = read_entry(connection, group_dn, GROUP_ATTRIBUTES)
    if entry is None:
        snapshot.broken.append(BrokenEntry(group_dn, "the group does not exist"))
        return None
    is_posix, is_dn_list = group_classes(entry)
    if not (is_posix or is_dn_list):
        snapshot.broken.append(
            BrokenEntry(
                group_dn, "is not a groupOfNames, groupOfUniqueNames, posixGroup or group (AD)"
            )
        )
        return None
    members, unresolved, listed = group_members(
        connection, group_dn, entry, snapshot, people_by_dn, people_by_gid, frozenset()
    )
    kind = POSIX_GROUP if is_posix else GROUP_OF_NAMES
    return DirectoryGroup(group_dn, kind, frozenset(members), listed), unresolved


def group_members(
    connection: Any,
    group_dn: str,
    entry: Mapping[str, list[bytes]],
    snapshot: DirectorySnapshot,
    people_by_dn: Mapping[str, DirectoryPerson],
    people_by_gid: Mapping[str, set[str]],
    outer: frozenset[str],
) -> tuple[set[str], list[str], int]:
    """Usernames, member DNs that are neither people nor groups, and values listed.

    `outer` holds the groups that led here: a group listing one of them is a loop and
    adds nobody new.
    """
    is_posix, _is_dn_list = group_classes(entry)
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
    path = outer | {own_dn}
    for raw_dn in [*entry.get("member", []), *entry.get("uniquemember", [])]:
        member_dn = raw_dn.decode("utf-8", errors="replace")
        normalized = normalize_dn(member_dn)
        if normalized == own_dn:  # the usual placeholder that keeps a groupOfNames valid
            continue
        listed += 1
        person = people_by_dn.get(normalized)
        if person is not None:
            members.add(person.username)
            continue
        if normalized in path:
            continue  # groups listing each other: everyone is counted once already
        nested = read_entry(connection, member_dn, GROUP_ATTRIBUTES)
        if nested is None or not any(group_classes(nested)):
            unresolved.append(member_dn)
            continue
        if len(path) > MAX_NESTING:
            snapshot.broken.append(
                BrokenEntry(
                    member_dn,
                    f"a group nested more than {MAX_NESTING} deep was not read; "
                    f"listed in {group_dn}",
                )
            )
            continue
        nested_members, nested_unresolved, _listed = group_members(
            connection, member_dn, nested, snapshot, people_by_dn, people_by_gid, path
        )
        members |= nested_members
        unresolved.extend(nested_unresolved)
    return members, unresolved, listed


def explain_unresolved_member(connection: Any, config: LdapConfig, member_dn: str) -> str:
    entry = read_entry(connection, member_dn, ["objectClass", config.username_attribute])
    if entry is None:
        return "the member does not exist"
    if not entry.get(config.username_attribute.lower()):
        return f"the member has no {config.username_attribute}"
    return f"the member is not found by {config.user_filter} under {config.user_search_base}"
