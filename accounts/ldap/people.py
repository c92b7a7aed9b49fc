"""The directory's people in isard: linked to their entry at each directory login, and
created, updated, enrolled and disabled by the group sync.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import CharField, Model
from django.db.models.functions import Lower

from accounts.choices import CourseRole, MembershipSource, Role
from accounts.ldap.client import BrokenEntry, DirectorySnapshot
from accounts.ldap.config import at_least
from accounts.ldap.report import MembershipChange, SyncReport
from accounts.models import (
    Course,
    CourseMembership,
    LdapAccount,
    School,
    User,
)


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


def max_length(model: type[Model], field_name: str) -> int:
    model_field = model._meta.get_field(field_name)
    assert isinstance(model_field, CharField) and model_field.max_length is not None
    return model_field.max_length


def sync_people(
    *,
    snapshot: DirectorySnapshot,
    present: set[str],
    roles: dict[str, Role] | None,
    at_least_teachers: set[str],
    school_of: dict[str, School],
    default_school: School | None,
    report: SyncReport,
    directory_id: int | None = None,
) -> dict[str, User]:
    """Create, update and enable the people in synced groups; return them by username.

    Roles follow `roles` (the role groups) when given; either way, the people in
    `at_least_teachers` (who teach a synced course by the directory) are teachers at least.

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
            role = roles[username] if roles is not None else Role.STUDENT
            user = User(
                username=username,
                role=at_least(role, Role.TEACHER) if username in at_least_teachers else role,
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
        role = Role(roles[username] if roles is not None else user.role)
        if username in at_least_teachers:
            role = at_least(role, Role.TEACHER)
        if user.role != role:
            report.role_changes.append(f"{username}: {user.role} → {role}")
            user.role = role
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
    """In the synced courses, make the memberships the directory gave match the groups.

    Only memberships with source "directory" are changed or removed. One given by hand or
    by a code stays, with its source, even when the groups list the person too (so that
    leaving the group later does not take them out); a teacher group may raise it to
    teacher, never lower it. Memberships of local accounts are never the sync's.
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
        from_directory = membership.source == MembershipSource.DIRECTORY
        if wanted is None:
            if from_directory:
                to_remove.append(membership.pk)
                report.removed_memberships.append(change)
            continue
        seen.add((membership.course_id, username))
        lowered = wanted == CourseRole.STUDENT and membership.role == CourseRole.TEACHER
        if membership.role != wanted and (from_directory or not lowered):
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
                    CourseMembership(
                        course_id=course_id,
                        user=users[username],
                        role=role,
                        source=MembershipSource.DIRECTORY,
                    )
                )
                report.added_memberships.append(
                    MembershipChange(username, course_names[course_id], str(role))
                )
    CourseMembership.objects.filter(pk__in=to_remove).delete()
    CourseMembership.objects.bulk_update(to_change, ["role"], batch_size=500)
    CourseMembership.objects.bulk_create(to_add, batch_size=500)


def follow_departures(
    *,
    present_ids: set[int] | None,
    in_directory: set[str],
    report: SyncReport,
    directory_id: int | None = None,
) -> None:
    """Disable this directory's people who left it, or left every synced group; their
    desktops stay.

    Gone from the directory (the user filter no longer finds them under the search base):
    anyone linked to it, including people who only ever signed in. Left every synced
    group (when `present_ids`, the people in one, is given): those the sync has seen in
    one. Someone disabled for leaving the directory who is back in it, and in no group,
    is enabled again here (people back in a group are enabled by `sync_people`).
    """
    accounts = (
        LdapAccount.objects.filter(directory_id=directory_id)
        .select_related("user")
        .order_by("user__username")
    )
    users: list[User] = []
    changed: list[LdapAccount] = []
    for account in accounts:
        user = account.user
        gone = user.username.lower() not in in_directory
        left_groups = (
            present_ids is not None and account.managed_by_sync and user.pk not in present_ids
        )
        if user.is_active and (gone or left_groups):
            user.is_active = False
            account.disabled_by_sync = True
            report.disabled_users.append(user.username)
        elif (
            not user.is_active
            and account.disabled_by_sync
            and not gone
            and not account.managed_by_sync
        ):
            user.is_active = True
            account.disabled_by_sync = False
            report.reactivated_users.append(user.username)
        else:
            continue
        users.append(user)
        changed.append(account)
    User.objects.bulk_update(users, ["is_active"], batch_size=500)
    LdapAccount.objects.bulk_update(changed, ["disabled_by_sync"], batch_size=500)
