"""The group sync: isard's people, courses and memberships follow the LDAP groups mapped
to courses (`LdapGroupMapping`) and the role groups (`ISARD_LDAP_ROLE_GROUPS`), in the
platform's directory and in each school's own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from accounts.choices import CourseRole, Role
from accounts.ldap.client import DirectoryError, DirectorySnapshot, GroupName, read_directory
from accounts.ldap.config import TEACHING_ROLES, LdapConfig, highest_role
from accounts.ldap.people import follow_departures, sync_memberships, sync_people
from accounts.ldap.report import SyncReport
from accounts.ldap.syntax import first_rdn_value, group_name_from_pattern, parent_dn
from accounts.models import (
    Course,
    LdapGroupMapping,
    LdapSyncRun,
    School,
    SchoolDirectory,
    User,
)
from isard.core.errors import ApplicationError, PermissionDeniedError


@dataclass(frozen=True)
class SyncTarget:
    """One directory and the group mappings the sync reads from it."""

    config: LdapConfig
    mappings: list[LdapGroupMapping]


def sync_targets() -> tuple[list[SyncTarget], list[str]]:
    """Each directory with its mappings: a school with its own directory reads its groups
    there, every other school's from the platform's directory. And warnings for mappings
    no directory can read."""
    platform = LdapConfig.from_settings()
    directories = list(
        SchoolDirectory.objects.filter(enabled=True).select_related("school").order_by("pk")
    )
    own = {directory.school_id: directory for directory in directories}
    mappings = list(
        LdapGroupMapping.objects.filter(enabled=True)
        .select_related("school", "course")
        .order_by("pk")
    )
    targets: list[SyncTarget] = []
    warnings: list[str] = []
    platform_mappings = [mapping for mapping in mappings if mapping.school_id not in own]
    if platform.enabled:
        targets.append(SyncTarget(platform, platform_mappings))
    elif platform_mappings:
        schools = sorted({mapping.school.name for mapping in platform_mappings})
        warnings.append(
            f"Groups mapped for {', '.join(schools)} were not read: those schools have no "
            "directory of their own and ISARD_LDAP_SERVER_URI is empty."
        )
    for directory in directories:
        targets.append(
            SyncTarget(
                LdapConfig.from_directory(directory),
                [mapping for mapping in mappings if mapping.school_id == directory.school_id],
            )
        )
    return targets, warnings


def ldap_sync(*, actor: User | None = None, dry_run: bool = False) -> SyncReport:
    """Make people, courses and memberships follow the directories' groups.

    The platform's directory (`ISARD_LDAP_*`) and each school's own (`SchoolDirectory`)
    are synced in turn, each with its mappings and role groups; one report covers all.
    For each: reads the directory first (no transaction is open during network I/O),
    then in one transaction: creates missing people and courses, updates names, e-mails
    and roles, adds, changes and removes the course memberships it gave (source
    "directory"; those given by hand or by a code stay) in synced courses, makes the
    teachers a mapping names (teachers' group, naming rule, attribute) its course's
    teachers, and disables (never deletes) its people who left the directory or every
    synced group. Local accounts are never
    touched, nor people of another directory. A second run with unchanged directories
    changes nothing.

    Broken entries are skipped and reported. If a mapped group cannot be read, its
    courses are left alone and nobody is disabled, so that one missing group cannot empty
    courses; if a role group cannot be read, roles are left alone. With several
    directories, one that fails is reported and the others are synced.
    """
    if actor is not None and not actor.is_admin:
        raise PermissionDeniedError("Only administrators may run the LDAP group sync.")
    targets, warnings = sync_targets()
    if not targets:
        raise ApplicationError(
            "LDAP is not configured: set ISARD_LDAP_SERVER_URI, or give a school its own directory."
        )
    started_at = timezone.now()
    clock = time.monotonic()
    report = SyncReport(dry_run=dry_run, warnings=warnings)
    failures: list[ApplicationError] = []
    for target in targets:
        try:
            sync_directory(target=target, report=report, dry_run=dry_run)
        except DirectoryError as error:
            if len(targets) == 1:
                raise
            failures.append(error)
            report.warnings.append(f"Not synced: {error.message}")
    if failures and len(failures) == len(targets):
        raise failures[0]
    report.seconds = time.monotonic() - clock
    if not dry_run:
        LdapSyncRun.objects.create(
            started_at=started_at,
            finished_at=timezone.now(),
            actor=actor,
            changes=report.change_count,
            skipped=len(report.skipped),
            summary=str(report),
        )
    return report


def sync_directory(*, target: SyncTarget, report: SyncReport, dry_run: bool) -> None:
    """Sync one directory's mappings and role groups into `report`."""
    config, mappings = target.config, target.mappings
    if not mappings and not config.role_groups:
        report.warnings.append(
            f"No LDAP group of {config.label} is mapped to a course and it has no role "
            "groups: only people who left the directory were looked for there."
        )

    snapshot = read_directory(
        config=config,
        group_dns=[
            *(mapping.group_dn for mapping in mappings),
            *(mapping.teachers_group_dn for mapping in mappings if mapping.teachers_group_dn),
            *config.role_groups.values(),
        ],
        person_attributes=[m.teachers_attribute for m in mappings if m.teachers_attribute],
        group_names=[
            name for mapping in mappings if (name := named_teachers_group(mapping, config))
        ],
    )
    report.skipped.extend(snapshot.broken)
    if not snapshot.people and any(group.listed for group in snapshot.groups.values()):
        raise DirectoryError(
            f"The groups list members but no person was found under "
            f"ISARD_LDAP_USER_SEARCH_BASE “{config.user_search_base}” with "
            f"{config.people_filter}: check those settings. Nothing was changed.",
            extra={"server": config.server_uri},
        )

    with transaction.atomic():
        # A second sync running at the same time waits here (PostgreSQL; SQLite serialises
        # writers anyway), then compares against what the first one wrote.
        list(LdapGroupMapping.objects.select_for_update().filter(pk__in=[m.pk for m in mappings]))
        apply_snapshot(snapshot=snapshot, mappings=mappings, config=config, report=report)
        if dry_run:
            transaction.set_rollback(True)


def teachers_group_base(mapping: LdapGroupMapping, config: LdapConfig) -> str:
    """Where a naming rule looks for the teachers' group: the group search base, or else
    beside the course's group."""
    return config.group_search_base or parent_dn(mapping.group_dn)


def named_teachers_group(mapping: LdapGroupMapping, config: LdapConfig) -> GroupName | None:
    if not mapping.teachers_group_pattern:
        return None
    return GroupName(
        teachers_group_base(mapping, config),
        group_name_from_pattern(mapping.teachers_group_pattern, mapping.group_dn),
    )


def teaches_by_role(config: LdapConfig) -> bool:
    """Whether the role groups tell teachers apart (there is a teachers' role group): then
    only people whose role is teacher or above count in a teachers' attribute (students
    often carry the same attribute, with their own class)."""
    return Role.TEACHER in config.role_groups


def missing_parts(
    mapping: LdapGroupMapping, snapshot: DirectorySnapshot, roles_known: bool
) -> list[str]:
    """What a mapping needs that could not be read (empty: the mapping can be followed)."""
    missing = [
        dn
        for dn in (mapping.group_dn, mapping.teachers_group_dn)
        if dn and snapshot.group(dn) is None
    ]
    if mapping.teachers_attribute and not roles_known:
        missing.append(f"the role groups (for {mapping.teachers_attribute})")
    return missing


def course_teachers(
    *,
    mapping: LdapGroupMapping,
    snapshot: DirectorySnapshot,
    config: LdapConfig,
    course: Course,
    may_teach: Callable[[str], bool],
    report: SyncReport,
) -> set[str]:
    """The usernames a students' mapping names as its course's teachers: its teachers'
    group, the group its naming rule finds, and the people whose attribute names it (if
    `may_teach` them)."""
    teachers: set[str] = set()
    if mapping.teachers_group_dn:
        group = snapshot.group(mapping.teachers_group_dn)
        assert group is not None  # unreadable mappings are not followed
        teachers |= group.members
    if (wanted := named_teachers_group(mapping, config)) is not None:
        found = snapshot.group_named(wanted.base, wanted.name)
        group = snapshot.group(found) if found else None
        if group is None:
            report.warnings.append(
                f"No group named “{wanted.name}” under {wanted.base}: “{course.name}” has no "
                "teachers from its naming rule."
            )
        else:
            teachers |= group.members
    if mapping.teachers_attribute:
        value = mapping.teachers_attribute_value or first_rdn_value(mapping.group_dn)
        teachers |= {
            username
            for username, person in snapshot.people.items()
            if person.has_value(mapping.teachers_attribute, value) and may_teach(username)
        }
    return teachers


def apply_snapshot(
    *,
    snapshot: DirectorySnapshot,
    mappings: Sequence[LdapGroupMapping],
    config: LdapConfig,
    report: SyncReport,
) -> None:
    role_groups = {role: snapshot.group(dn) for role, dn in config.role_groups.items()}
    missing_role_groups = [config.role_groups[role] for role, g in role_groups.items() if g is None]

    def role_from_groups(username: str) -> Role:
        return highest_role(
            [g.dn for g in role_groups.values() if g is not None and username in g.members],
            config.role_groups,
        )

    restrict_to_teachers = teaches_by_role(config)
    roles_known = not (restrict_to_teachers and missing_role_groups)
    missing_by_mapping = {m.pk: missing_parts(m, snapshot, roles_known) for m in mappings}
    readable = [mapping for mapping in mappings if not missing_by_mapping[mapping.pk]]
    unreadable = [mapping for mapping in mappings if missing_by_mapping[mapping.pk]]
    if unreadable or missing_role_groups:
        missing = [
            *dict.fromkeys(part for m in unreadable for part in missing_by_mapping[m.pk]),
            *missing_role_groups,
        ]
        report.warnings.append(
            f"Nobody was disabled because {', '.join(dict.fromkeys(missing))} could not be read."
        )
    if missing_role_groups:
        report.warnings.append("Roles were left as they were: a role group could not be read.")

    # Who should be where, from the groups that could be read.
    courses = courses_for_mappings(readable, report)
    desired: dict[int, dict[str, CourseRole]] = {course.pk: {} for course in courses.values()}
    school_of: dict[str, School] = {}
    present: set[str] = set()
    for mapping in readable:
        group = snapshot.group(mapping.group_dn)
        assert group is not None
        course = courses[mapping.pk]
        teachers = course_teachers(
            mapping=mapping,
            snapshot=snapshot,
            config=config,
            course=course,
            may_teach=lambda name: (
                not restrict_to_teachers or role_from_groups(name) in TEACHING_ROLES
            ),
            report=report,
        )
        members = {username: CourseRole(mapping.role) for username in group.members}
        members |= dict.fromkeys(teachers, CourseRole.TEACHER)
        for username, role in members.items():
            present.add(username)
            school_of.setdefault(username, mapping.school)
            if desired[course.pk].get(username) != CourseRole.TEACHER:
                desired[course.pk][username] = role
    # Someone the directory makes a course's teacher is a teacher at least.
    course_teacher_names = {
        username
        for members in desired.values()
        for username, role in members.items()
        if role == CourseRole.TEACHER
    }
    # A course also fed by an unreadable group is left alone: its list would be partial.
    for mapping in unreadable:
        partial_course = (
            mapping.course
            or Course.objects.filter(school=mapping.school, name=mapping.course_name).first()
        )
        if partial_course is not None:
            desired.pop(partial_course.pk, None)
    for group in role_groups.values():
        if group is not None:
            present |= group.members
    roles: dict[str, Role] | None = None
    if config.role_groups and not missing_role_groups:
        roles = {username: role_from_groups(username) for username in present}

    users = sync_people(
        snapshot=snapshot,
        present=present,
        roles=roles,
        at_least_teachers=course_teacher_names,
        school_of=school_of,
        default_school=School.objects.filter(slug=config.school_slug).first()
        if config.school_slug
        else None,
        report=report,
        directory_id=config.directory_id,
    )
    # People skipped by `sync_people` (their name belongs to another directory) stay out.
    for members in desired.values():
        for username in [name for name in members if name not in users]:
            del members[username]
    sync_memberships(desired=desired, courses=courses.values(), users=users, report=report)
    if unreadable or missing_role_groups:
        return
    if not snapshot.people:
        report.warnings.append(
            f"Nobody was disabled: no person was found under “{config.user_search_base}” "
            f"with {config.people_filter}."
        )
        return
    follow_departures(
        # With nothing mapped, leaving the groups means nothing: only leaving the directory.
        present_ids={user.pk for user in users.values()}
        if mappings or config.role_groups
        else None,
        in_directory=set(snapshot.people),
        report=report,
        directory_id=config.directory_id,
    )


def courses_for_mappings(
    mappings: Iterable[LdapGroupMapping], report: SyncReport
) -> dict[int, Course]:
    """Mapping id -> its course, creating missing courses and linking them to the mapping."""
    courses: dict[int, Course] = {}
    for mapping in mappings:
        course = mapping.course
        if course is None:
            course, created = Course.objects.get_or_create(
                school=mapping.school, name=mapping.course_name
            )
            if created:
                report.created_courses.append(f"{course.name} ({mapping.school.name})")
            mapping.course = course
            mapping.save(update_fields=["course"])
        courses[mapping.pk] = course
    return courses
