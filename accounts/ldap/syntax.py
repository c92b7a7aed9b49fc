"""What an administrator writes about a directory, checked before it is used: DNs,
attribute names, the naming rule of teachers' groups, and the role groups.

Pure (no connection, no models), so the settings, the models and the admin's forms all
use the same rules and give the same messages. The role groups have one format
everywhere, in `ISARD_LDAP_ROLE_GROUPS` and in a school directory's form:
`role=group DN` entries separated by `;` or new lines (DNs are full of commas).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import ldap.dn
from django.core.exceptions import ValidationError

#: RFC 4512: a name (letter, then letters, digits and hyphens) or a numeric OID.
ATTRIBUTE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]*|[0-9]+(\.[0-9]+)+")


#: The placeholder of a naming rule: the course group's own name (its cn).
COURSE_PLACEHOLDER = "{course}"


#: Characters that would make a group name into something else inside a DN or a filter.
NAME_SPECIALS = frozenset(',=+<>#;\\"*()\0')


ROLE_GROUPS_FORMAT = (
    "role=group DN entries, one per line or separated by “;”, e.g. "
    "teacher=cn=teachers,ou=groups,dc=school,dc=example"
)


def validate_attribute_name(value: str) -> None:
    """An LDAP attribute name (`mail`, `departmentNumber`, `schoolClass`) or an OID."""
    if not ATTRIBUTE_NAME.fullmatch(value):
        raise ValidationError(
            f"“{value}” is not an LDAP attribute name: a letter, then letters, digits and "
            "hyphens (e.g. departmentNumber), or a numeric OID.",
            code="attribute_name",
        )


def dn_problem(value: str) -> str | None:
    """Why `value` is not a usable DN, or None."""
    if not value.strip():
        return "is empty"
    try:
        parts = ldap.dn.str2dn(value.strip())
    except ldap.DECODING_ERROR:
        return "is not a DN (e.g. cn=teachers,ou=groups,dc=school,dc=example)"
    if not parts:
        return "is not a DN (e.g. cn=teachers,ou=groups,dc=school,dc=example)"
    return None


def validate_dn(value: str) -> None:
    if (problem := dn_problem(value)) is not None:
        raise ValidationError(f"“{value}” {problem}.", code="dn")


def first_rdn_value(dn: str) -> str:
    """The entry's own name: `1a` for `cn=1a,ou=groups,...` (empty if not a DN)."""
    try:
        parts = ldap.dn.str2dn(dn.strip())
    except ldap.DECODING_ERROR:
        return ""
    return str(parts[0][0][1]) if parts else ""


def parent_dn(dn: str) -> str:
    """`ou=groups,dc=x` for `cn=1a,ou=groups,dc=x` (empty if not a DN)."""
    try:
        parts = ldap.dn.str2dn(dn.strip())
    except ldap.DECODING_ERROR:
        return ""
    return str(ldap.dn.dn2str(parts[1:]))


def validate_group_name_pattern(value: str) -> None:
    """A naming rule such as `teachers-{course}` or `{course}-teachers`."""
    problem = None
    if value.count(COURSE_PLACEHOLDER) != 1:
        problem = f"needs {COURSE_PLACEHOLDER} exactly once"
    elif "{" in (rest := value.replace(COURSE_PLACEHOLDER, "")) or "}" in rest:
        problem = f"may hold no braces besides {COURSE_PLACEHOLDER}"
    elif not rest.strip():
        problem = f"needs text besides {COURSE_PLACEHOLDER} (that would be the course's own group)"
    elif specials := sorted(NAME_SPECIALS & set(rest)):
        problem = f"may not contain {' '.join(specials)} (it is a group's name, not a DN)"
    if problem is not None:
        raise ValidationError(
            f"The naming rule “{value}” {problem}; e.g. teachers-{COURSE_PLACEHOLDER} or "
            f"{COURSE_PLACEHOLDER}-teachers.",
            code="pattern",
        )


def group_name_from_pattern(pattern: str, course_group_dn: str) -> str:
    """The teachers' group name a naming rule gives for a course's group."""
    return pattern.replace(COURSE_PLACEHOLDER, first_rdn_value(course_group_dn))


def parse_role_groups(value: str) -> dict[str, str]:
    """`"teacher=cn=teachers,ou=groups,dc=x;admin=cn=admins,..."` -> {"teacher": "cn=..."}.

    Entries are separated by semicolons or new lines; role names are case-insensitive.
    Raises `ValueError` saying which entry is wrong and what the format is.
    """
    if value.strip().startswith("{"):
        raise ValueError(f"write {ROLE_GROUPS_FORMAT} (not JSON).")
    groups: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in re.split(r"[;\n]", value))):
        role, separator, group_dn = entry.partition("=")
        role, group_dn = role.strip().lower(), group_dn.strip()
        if not separator or not role or not group_dn:
            raise ValueError(f"“{entry}” is not role=group DN; write {ROLE_GROUPS_FORMAT}.")
        if (problem := dn_problem(group_dn)) is not None:
            raise ValueError(f"the group of “{role}”, “{group_dn}”, {problem}.")
        if role in groups:
            raise ValueError(f"“{role}” is given twice.")
        groups[role] = group_dn
    return groups


def format_role_groups(groups: Mapping[str, str]) -> str:
    """The role groups as they are written: one `role=group DN` per line."""
    return "\n".join(f"{role}={dn}" for role, dn in groups.items())
