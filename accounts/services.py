"""Writes to people and courses, as typed functions.

The directory side: linking a person to their LDAP entry at login, and the group sync,
which makes isard's people, courses and memberships follow the LDAP groups mapped to
courses (`LdapGroupMapping`) and the role groups (`ISARD_LDAP_ROLE_GROUPS`). Then
enrolment codes (a course's code per role, to join or sign up with) and password resets.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from django.db import transaction
from django.db.models import CharField, Model
from django.db.models.functions import Lower
from django.utils import timezone

from accounts.choices import CourseRole, Role
from accounts.ldap_directory import (
    BrokenEntry,
    DirectoryError,
    DirectorySnapshot,
    LdapConfig,
    highest_role,
    read_directory,
)
from accounts.models import (
    Course,
    CourseMembership,
    EnrolmentCode,
    LdapAccount,
    LdapGroupMapping,
    LdapSyncRun,
    School,
    SchoolDirectory,
    User,
)
from accounts.permissions import can_manage_course, can_manage_user
from isard.core.errors import ApplicationError, ConflictError, NotFoundError, PermissionDeniedError

logger = logging.getLogger(__name__)

#: How many names `str(SyncReport)` lists per kind of change before "and N more".
NAMES_SHOWN = 20


def ldap_account_link(*, user: User, dn: str, directory_id: int | None = None) -> LdapAccount:
    """Record that `user` is the entry `dn` of a directory (at each directory login).

    `directory_id` is the school's `SchoolDirectory`, or None for the platform's.
    """
    account, created = LdapAccount.objects.get_or_create(
        user=user, defaults={"dn": dn, "directory_id": directory_id}
    )
    if not created and (account.dn, account.directory_id) != (dn, directory_id):
        account.dn = dn
        account.directory_id = directory_id
        account.save(update_fields=["dn", "directory"])
    return account


@dataclass(frozen=True)
class MembershipChange:
    username: str
    course: str
    role: str

    def __str__(self) -> str:
        return f"{self.username} in {self.course} as {self.role}"


@dataclass
class SyncReport:
    """What one group sync changed, and what it had to skip."""

    created_users: list[str] = field(default_factory=list)
    updated_users: list[str] = field(default_factory=list)
    role_changes: list[str] = field(default_factory=list)
    reactivated_users: list[str] = field(default_factory=list)
    disabled_users: list[str] = field(default_factory=list)
    created_courses: list[str] = field(default_factory=list)
    added_memberships: list[MembershipChange] = field(default_factory=list)
    changed_memberships: list[MembershipChange] = field(default_factory=list)
    removed_memberships: list[MembershipChange] = field(default_factory=list)
    skipped: list[BrokenEntry] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False
    seconds: float = 0.0

    #: (attribute, singular, plural) of every kind of change, in the summary's order.
    CHANGES = (
        ("created_users", "person created", "people created"),
        ("updated_users", "person updated", "people updated"),
        ("role_changes", "role changed", "roles changed"),
        ("reactivated_users", "person enabled again", "people enabled again"),
        ("disabled_users", "person disabled", "people disabled"),
        ("created_courses", "course created", "courses created"),
        ("added_memberships", "membership added", "memberships added"),
        ("changed_memberships", "membership changed", "memberships changed"),
        ("removed_memberships", "membership removed", "memberships removed"),
    )

    def counts(self) -> dict[str, int]:
        counts = {name: len(getattr(self, name)) for name, *_labels in self.CHANGES}
        return counts | {"skipped": len(self.skipped), "warnings": len(self.warnings)}

    @property
    def change_count(self) -> int:
        return sum(len(getattr(self, name)) for name, *_labels in self.CHANGES)

    @property
    def has_changes(self) -> bool:
        return self.change_count > 0

    def __str__(self) -> str:
        title = "LDAP group sync (dry run, nothing saved)" if self.dry_run else "LDAP group sync"
        done = [
            f"{len(items)} {singular if len(items) == 1 else plural}"
            for name, singular, plural in self.CHANGES
            if (items := getattr(self, name))
        ]
        line = f"{title}: {', '.join(done) if done else 'no changes'}"
        if self.skipped:
            line += f"; {len(self.skipped)} {'entry' if len(self.skipped) == 1 else 'entries'}"
            line += " skipped"
        lines = [f"{line} ({self.seconds:.2f} s)."]
        if self.disabled_users:
            lines.append(
                "Disabled, not deleted (they left every synced group; desktops kept): "
                + shorten(self.disabled_users)
            )
        for name, _singular, plural in self.CHANGES:
            if name != "disabled_users" and (items := getattr(self, name)):
                lines.append(f"{plural.capitalize()}: {shorten(items)}")
        lines.extend(f"Skipped {entry}" for entry in self.skipped)
        lines.extend(f"Warning: {warning}" for warning in self.warnings)
        return "\n".join(lines)


def shorten(items: Sequence[object]) -> str:
    shown = ", ".join(str(item) for item in items[:NAMES_SHOWN])
    hidden = len(items) - NAMES_SHOWN
    return f"{shown} and {hidden} more" if hidden > 0 else shown


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
    and roles, adds, changes and removes the course memberships of that directory's
    people in synced courses, and disables (never deletes) its people who left every
    synced group. Local accounts are never touched, nor people of another directory. A
    second run with unchanged directories changes nothing.

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


def max_length(model: type[Model], field_name: str) -> int:
    model_field = model._meta.get_field(field_name)
    assert isinstance(model_field, CharField) and model_field.max_length is not None
    return model_field.max_length


def sync_people(
    *,
    snapshot: DirectorySnapshot,
    present: set[str],
    roles: dict[str, Role] | None,
    school_of: dict[str, School],
    default_school: School | None,
    report: SyncReport,
    directory_id: int | None = None,
) -> dict[str, User]:
    """Create, update and enable the people in synced groups; return them by username.

    A name that already belongs to someone of another directory (or, for a school's
    directory, to a local account of another school) is skipped and reported: one
    platform, one namespace of usernames, never two people merged.
    """
    existing: dict[str, User] = {
        user.username.lower(): user
        for user in User.objects.annotate(username_lower=Lower("username")).filter(
            username_lower__in=present
        )
    }
    accounts = {
        account.user_id: account
        for account in LdapAccount.objects.filter(user__in=list(existing.values()))
    }
    for username, known in list(existing.items()):
        account = accounts.get(known.pk)
        other_directory = account is not None and account.directory_id != directory_id
        other_school = (
            account is None
            and directory_id is not None
            and known.school_id is not None
            and default_school is not None
            and known.school_id != default_school.pk
        )
        if other_directory or other_school:
            report.skipped.append(
                BrokenEntry(
                    snapshot.people[username].dn,
                    f"the username “{username}” belongs to a person of another "
                    + ("directory" if other_directory else "school"),
                )
            )
            present.discard(username)
            del existing[username]
    lengths = {name: max_length(User, name) for name in ("first_name", "last_name", "email")}
    to_create: list[User] = []
    to_update: list[User] = []
    for username in sorted(present):
        person = snapshot.people[username]
        values = {
            "first_name": person.first_name[: lengths["first_name"]],
            "last_name": person.last_name[: lengths["last_name"]],
            "email": person.email[: lengths["email"]],
        }
        user = existing.get(username)
        if user is None:
            user = User(
                username=username,
                role=(roles or {}).get(username, Role.STUDENT),
                school=school_of.get(username, default_school),
                **values,
            )
            user.set_unusable_password()
            to_create.append(user)
            report.created_users.append(username)
            continue
        changed = [name for name, value in values.items() if getattr(user, name) != value]
        for name in changed:
            setattr(user, name, values[name])
        if changed:
            report.updated_users.append(username)
        if roles is not None and user.role != roles[username]:
            report.role_changes.append(f"{username}: {user.role} → {roles[username]}")
            user.role = roles[username]
            changed.append("role")
        account = accounts.get(user.pk)
        if not user.is_active and account is not None and account.disabled_by_sync:
            user.is_active = True
            changed.append("is_active")
            report.reactivated_users.append(username)
        if changed:
            to_update.append(user)
    User.objects.bulk_create(to_create)
    User.objects.bulk_update(
        to_update, ["first_name", "last_name", "email", "role", "is_active"], batch_size=500
    )

    users = {**existing, **{user.username: user for user in to_create}}
    new_accounts: list[LdapAccount] = []
    changed_accounts: list[LdapAccount] = []
    for username, user in users.items():
        dn = snapshot.people[username].dn
        account = accounts.get(user.pk)
        if account is None:
            new_accounts.append(
                LdapAccount(user=user, dn=dn, managed_by_sync=True, directory_id=directory_id)
            )
            continue
        # Cleared once the person is active again, whoever enabled them.
        disabled_by_sync = account.disabled_by_sync and not user.is_active
        if (account.dn, account.managed_by_sync, account.disabled_by_sync) != (
            dn,
            True,
            disabled_by_sync,
        ):
            account.dn = dn
            account.managed_by_sync = True
            account.disabled_by_sync = disabled_by_sync
            changed_accounts.append(account)
    LdapAccount.objects.bulk_create(new_accounts)
    LdapAccount.objects.bulk_update(
        changed_accounts, ["dn", "managed_by_sync", "disabled_by_sync"], batch_size=500
    )
    return users


def sync_memberships(
    *,
    desired: dict[int, dict[str, CourseRole]],
    courses: Iterable[Course],
    users: dict[str, User],
    report: SyncReport,
) -> None:
    """In the synced courses, make the memberships of directory people match the groups.

    Memberships of local accounts (no `LdapAccount`) are the teachers' business and stay.
    """
    course_names = {course.pk: course.name for course in courses}
    current = CourseMembership.objects.filter(
        course_id__in=list(desired), user__ldap_account__isnull=False
    ).select_related("user")
    seen: set[tuple[int, str]] = set()
    to_remove: list[int] = []
    to_change: list[CourseMembership] = []
    for membership in current:
        username = membership.user.username.lower()
        wanted = desired[membership.course_id].get(username)
        change = MembershipChange(username, course_names[membership.course_id], membership.role)
        if wanted is None:
            to_remove.append(membership.pk)
            report.removed_memberships.append(change)
            continue
        seen.add((membership.course_id, username))
        if membership.role != wanted:
            membership.role = wanted
            to_change.append(membership)
            report.changed_memberships.append(
                MembershipChange(username, change.course, str(wanted))
            )
    to_add: list[CourseMembership] = []
    for course_id, members in desired.items():
        for username, role in sorted(members.items()):
            if (course_id, username) not in seen:
                to_add.append(
                    CourseMembership(course_id=course_id, user=users[username], role=role)
                )
                report.added_memberships.append(
                    MembershipChange(username, course_names[course_id], str(role))
                )
    CourseMembership.objects.filter(pk__in=to_remove).delete()
    CourseMembership.objects.bulk_update(to_change, ["role"], batch_size=500)
    CourseMembership.objects.bulk_create(to_add, batch_size=500)


def disable_departed(
    *, present_ids: set[int], report: SyncReport, directory_id: int | None = None
) -> None:
    """Disable this directory's people who left every synced group; their desktops stay."""
    departed = (
        LdapAccount.objects.filter(
            managed_by_sync=True, user__is_active=True, directory_id=directory_id
        )
        .exclude(user_id__in=present_ids)
        .select_related("user")
        .order_by("user__username")
    )
    users: list[User] = []
    accounts: list[LdapAccount] = []
    for account in departed:
        account.user.is_active = False
        account.disabled_by_sync = True
        users.append(account.user)
        accounts.append(account)
        report.disabled_users.append(account.user.username)
    User.objects.bulk_update(users, ["is_active"], batch_size=500)
    LdapAccount.objects.bulk_update(accounts, ["disabled_by_sync"], batch_size=500)


# --- enrolment codes -----------------------------------------------------------------------

#: Letters and digits that cannot be mistaken for one another when read aloud or copied.
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 8


def normalize_code(code: str) -> str:
    """What people type ("abcd-efgh ", "ABCDEFGH") to the stored form ("ABCDEFGH")."""
    return "".join(character for character in code.upper() if character.isalnum())


def format_code(code: str) -> str:
    """The code as shown to people: two groups of four."""
    return f"{code[:4]}-{code[4:]}" if len(code) == CODE_LENGTH else code


def _new_code() -> str:
    while True:
        code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
        if not EnrolmentCode.objects.filter(code=code).exists():
            return code


def _check_course_teacher(actor: User, course: Course) -> None:
    if not can_manage_course(actor, course):
        raise PermissionDeniedError(f"Only the teachers of “{course.name}” can change its codes.")


def enrolment_code_regenerate(*, actor: User, course: Course, role: CourseRole) -> EnrolmentCode:
    """Give the course a new code for `role` (enabled); the previous one stops working."""
    _check_course_teacher(actor, course)
    role = CourseRole(role)
    with transaction.atomic():
        code, _created = EnrolmentCode.objects.update_or_create(
            course=course,
            role=role,
            defaults={"code": _new_code(), "enabled": True, "updated_by": actor},
        )
    logger.info("%s regenerated the %s code of %s", actor, role, course)
    return code


def enrolment_code_disable(*, actor: User, course: Course, role: CourseRole) -> None:
    """Refuse the course's code for `role` until it is regenerated."""
    _check_course_teacher(actor, course)
    EnrolmentCode.objects.filter(course=course, role=CourseRole(role)).update(
        enabled=False, updated_by=actor, updated_at=timezone.now()
    )
    logger.info("%s disabled the %s code of %s", actor, role, course)


def enrolment_code_find(code: str) -> EnrolmentCode:
    """The enabled code people typed, or an error that tells them what to do."""
    normalized = normalize_code(code)
    if not normalized:
        raise ApplicationError("Type the course code your teacher gave you.")
    found = EnrolmentCode.objects.select_related("course__school").filter(code=normalized).first()
    if found is None:
        raise NotFoundError(
            f"The code “{code.strip()}” is not valid: check it, or ask your teacher for the "
            "current one (a regenerated code replaces the old one)."
        )
    if not found.enabled:
        raise ConflictError(
            f"The code for “{found.course.name}” has been disabled; ask your teacher for a new one."
        )
    return found


@dataclass(frozen=True)
class Enrolment:
    """What joining with a code did."""

    course: Course
    role: CourseRole
    changed: bool

    def __str__(self) -> str:
        role = self.role.label.lower()
        if not self.changed:
            return f"You are already in “{self.course.name}” as a {role}."
        return f"You joined “{self.course.name}” as a {role}."


def course_join_with_code(*, user: User, code: str) -> Enrolment:
    """Put `user` in the code's course with the code's role.

    A teacher code makes a student a teacher (of this course, and a teacher overall);
    a student code never lowers a teacher. A person of another school is refused, so that
    a code cannot carry anyone across schools.
    """
    found = enrolment_code_find(code)
    course = found.course
    role = CourseRole(found.role)
    if user.school_id not in (None, course.school_id) and not user.is_admin:
        raise PermissionDeniedError(
            f"The code is for a course of another school (“{course.school.name}”)."
        )
    with transaction.atomic():
        changed_fields = []
        if user.school_id is None and not user.is_admin:
            user.school = course.school
            changed_fields.append("school")
        if role == CourseRole.TEACHER and user.role == Role.STUDENT:
            user.role = Role.TEACHER
            changed_fields.append("role")
        if changed_fields:
            user.save(update_fields=changed_fields)
        membership, created = CourseMembership.objects.get_or_create(
            course=course, user=user, defaults={"role": role}
        )
        changed = created
        if not created and membership.role == CourseRole.STUDENT and role == CourseRole.TEACHER:
            membership.role = role
            membership.save(update_fields=["role"])
            changed = True
    final_role = CourseRole(membership.role)
    if changed:
        logger.info("%s joined %s as %s with a code", user, course, final_role)
    return Enrolment(course=course, role=final_role, changed=changed)


def user_signup_with_code(
    *,
    code: str,
    username: str,
    password: str,
    first_name: str = "",
    last_name: str = "",
    email: str = "",
) -> tuple[User, Enrolment]:
    """A new local account, in the code's school and course with the code's role."""
    from django.contrib.auth.password_validation import validate_password
    from django.core.exceptions import ValidationError

    found = enrolment_code_find(code)
    school = found.course.school
    if not school.local_accounts:
        raise PermissionDeniedError(
            f"“{school.name}” signs its people in with its directory: sign in with your "
            "school account and give the code there."
        )
    username = username.strip()
    if not username:
        raise ApplicationError("Choose a username.")
    if User.objects.filter(username__iexact=username).exists():
        raise ConflictError(f"The username “{username}” is taken; choose another.")
    role = Role.TEACHER if found.role == CourseRole.TEACHER else Role.STUDENT
    user = User(
        username=username,
        first_name=first_name.strip(),
        last_name=last_name.strip(),
        email=email.strip(),
        role=role,
        school=found.course.school,
    )
    try:
        validate_password(password, user)
    except ValidationError as error:
        raise ApplicationError(" ".join(error.messages), extra={"field": "password"}) from error
    user.set_password(password)
    with transaction.atomic():
        user.save()
        enrolment = course_join_with_code(user=user, code=found.code)
    return user, enrolment


# --- passwords -----------------------------------------------------------------------------


def user_password_reset(*, actor: User, user: User) -> str:
    """Give `user` a one-time temporary password, returned once to show to them.

    Only the hash is stored. At their next sign-in they must choose a new password before
    anything else (`must_change_password`); their open sessions end at once. People who
    sign in with the directory keep their password there.
    """
    if not can_manage_user(actor, user):
        raise PermissionDeniedError(
            f"Only an administrator or a manager of {user.get_username()}'s school can reset "
            "their password."
        )
    if LdapAccount.objects.filter(user=user).exists():
        raise ConflictError(
            f"{user.get_username()} signs in with the school's directory (LDAP): reset the "
            "password there."
        )
    if user.school is not None and not user.school.local_accounts and not user.is_admin:
        raise ConflictError(
            f"“{user.school.name}” has no local accounts: {user.get_username()} signs in with "
            "the school's directory."
        )
    temporary = "-".join(
        "".join(secrets.choice(CODE_ALPHABET.lower()) for _ in range(4)) for _ in range(3)
    )
    user.set_password(temporary)
    user.must_change_password = True
    user.save(update_fields=["password", "must_change_password"])
    logger.info("%s reset the password of %s", actor, user)
    return temporary


def user_password_change(*, user: User, password: str) -> None:
    """The person chose a new password (after a reset, or at any time)."""
    user.set_password(password)
    user.must_change_password = False
    user.save(update_fields=["password", "must_change_password"])
