"""The group sync: isard's people, courses and memberships follow the LDAP groups mapped
to courses (`LdapGroupMapping`) and the role groups (`ISARD_LDAP_ROLE_GROUPS`), in the
platform's directory and in each school's own.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from accounts.choices import CourseRole, Role
from accounts.ldap.client import DirectoryError, DirectorySnapshot, read_directory
from accounts.ldap.config import LdapConfig, highest_role
from accounts.ldap.people import disable_departed, sync_memberships, sync_people
from accounts.ldap.report import SyncReport
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
    "directory"; those given by hand or by a code stay) in synced courses, and disables
    (never deletes) its people who left every synced group. Local accounts are never
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
            "groups: nothing to sync there."
        )
        return

    snapshot = read_directory(
        config=config,
        group_dns=[*(mapping.group_dn for mapping in mappings), *config.role_groups.values()],
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


def apply_snapshot(
    *,
    snapshot: DirectorySnapshot,
    mappings: Sequence[LdapGroupMapping],
    config: LdapConfig,
    report: SyncReport,
) -> None:
    readable = [mapping for mapping in mappings if snapshot.group(mapping.group_dn) is not None]
    unreadable = [mapping for mapping in mappings if snapshot.group(mapping.group_dn) is None]
    role_groups = {role: snapshot.group(dn) for role, dn in config.role_groups.items()}
    missing_role_groups = [config.role_groups[role] for role, g in role_groups.items() if g is None]
    if unreadable or missing_role_groups:
        missing = [mapping.group_dn for mapping in unreadable] + missing_role_groups
        report.warnings.append(
            f"Nobody was disabled because {', '.join(missing)} could not be read."
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
        for username in group.members:
            present.add(username)
            school_of.setdefault(username, mapping.school)
            if desired[course.pk].get(username) != CourseRole.TEACHER:
                desired[course.pk][username] = CourseRole(mapping.role)
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
        roles = {
            username: highest_role(
                [g.dn for g in role_groups.values() if g is not None and username in g.members],
                config.role_groups,
            )
            for username in present
        }

    users = sync_people(
        snapshot=snapshot,
        present=present,
        roles=roles,
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
    if not unreadable and not missing_role_groups:
        disable_departed(
            present_ids={user.pk for user in users.values()},
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
