"""The LDAP group sync against a real slapd: people, courses, memberships, reports."""

from __future__ import annotations

import time
from collections import defaultdict
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth import authenticate
from django.core.management import call_command
from django.core.management.base import CommandError

from accounts.choices import CourseRole, Role
from accounts.ldap.client import DirectoryError, DirectoryUnreachableError
from accounts.ldap.report import MembershipChange, SyncReport
from accounts.ldap.sync import ldap_sync
from accounts.models import (
    Course,
    CourseMembership,
    LdapAccount,
    LdapGroupMapping,
    LdapSyncRun,
    School,
    User,
)
from accounts.services.enrolment import course_join_with_code, enrolment_code_regenerate
from accounts.tasks import ldap_sync_task
from accounts.tests.factories import CourseFactory, MembershipFactory, SchoolFactory, UserFactory
from accounts.tests.slapd import (  # noqa: F401  (fixtures)
    LdapTree,
    directory_fixture,
    free_port,
    slapd_fixture,
)
from desktops.models import Desktop
from isard.core.errors import PermissionDeniedError
from templates_app.tests.factories import HardwareProfileFactory

pytestmark = pytest.mark.django_db


def memberships(course_name: str) -> dict[str, str]:
    return dict(
        CourseMembership.objects.filter(course__name=course_name).values_list(
            "user__username", "role"
        )
    )


def mapping(
    group_dn: str, course_name: str, *, school: School, role: CourseRole = CourseRole.STUDENT
) -> LdapGroupMapping:
    return LdapGroupMapping.objects.create(
        group_dn=group_dn, school=school, course_name=course_name, role=role
    )


@pytest.fixture
def school() -> School:
    return SchoolFactory.create(name="North school", slug="north")


@pytest.fixture
def small_school(directory: LdapTree, school: School) -> dict[str, str]:
    """Maths 1A (groupOfNames: students and a teacher group) and Art (posixGroup)."""
    for uid in ("alice", "bob", "carol", "dave", "tina"):
        directory.add_person(uid)
    directory.add_person("paul", gid_number=7001)  # in Art through his primary group
    groups = {
        "math_students": directory.add_group_of_names("math-1a", ["alice", "bob", "carol"]),
        "math_teachers": directory.add_group_of_names("math-1a-teachers", ["tina"]),
        "art": directory.add_posix_group("art", ["dave", "alice"], gid_number=7001),
    }
    mapping(groups["math_students"], "Maths 1A", school=school)
    mapping(groups["math_teachers"], "Maths 1A", school=school, role=CourseRole.TEACHER)
    mapping(groups["art"], "Art", school=school)
    return groups


def test_sync_creates_people_courses_and_memberships_from_both_group_kinds(
    small_school: dict[str, str], school: School
) -> None:
    report = ldap_sync()

    assert sorted(report.created_users) == ["alice", "bob", "carol", "dave", "paul", "tina"]
    assert sorted(report.created_courses) == ["Art (North school)", "Maths 1A (North school)"]
    assert memberships("Maths 1A") == {
        "alice": CourseRole.STUDENT,
        "bob": CourseRole.STUDENT,
        "carol": CourseRole.STUDENT,
        "tina": CourseRole.TEACHER,
    }
    assert memberships("Art") == {"alice": "student", "dave": "student", "paul": "student"}
    assert len(report.added_memberships) == 7
    assert report.skipped == [] and report.warnings == []
    alice = User.objects.get(username="alice")
    assert (alice.first_name, alice.email, alice.school, alice.is_active) == (
        "Alice",
        "alice@school.test",
        school,
        True,
    )
    assert not alice.has_usable_password()
    assert LdapAccount.objects.filter(managed_by_sync=True).count() == 6
    assert LdapGroupMapping.objects.filter(course__isnull=True).count() == 0
    assert LdapSyncRun.objects.get().changes == report.change_count


def test_a_group_of_unique_names_feeds_its_course_and_follows_its_changes(
    directory: LdapTree, school: School
) -> None:
    for uid in ("ines", "jon", "kim"):
        directory.add_person(uid)
    music = directory.add_group_of_unique_names("music", ["ines", "jon"])
    mapping(music, "Music", school=school)

    report = ldap_sync()
    assert sorted(report.created_users) == ["ines", "jon"]
    assert memberships("Music") == {"ines": CourseRole.STUDENT, "jon": CourseRole.STUDENT}
    assert report.skipped == [] and report.warnings == []

    directory.remove_member(music, "jon")
    directory.add_member(music, "kim")
    ldap_sync()
    assert memberships("Music") == {"ines": CourseRole.STUDENT, "kim": CourseRole.STUDENT}


def test_second_sync_changes_nothing(small_school: dict[str, str]) -> None:
    ldap_sync()

    report = ldap_sync()

    assert not report.has_changes
    assert report.counts() == dict.fromkeys(report.counts(), 0)
    assert str(report).startswith("LDAP group sync: no changes (")


def test_person_moved_between_groups_moves_between_courses(
    directory: LdapTree, small_school: dict[str, str]
) -> None:
    ldap_sync()
    directory.remove_member(small_school["math_students"], "bob")
    directory.add_member(small_school["art"], "bob")

    report = ldap_sync()

    assert report.removed_memberships == [MembershipChange("bob", "Maths 1A", "student")]
    assert report.added_memberships == [MembershipChange("bob", "Art", "student")]
    assert report.disabled_users == []
    assert "bob" not in memberships("Maths 1A")
    assert memberships("Art")["bob"] == "student"


def test_person_moved_to_the_teacher_group_changes_role_in_the_course(
    directory: LdapTree, small_school: dict[str, str]
) -> None:
    ldap_sync()
    directory.remove_member(small_school["math_students"], "carol")
    directory.add_member(small_school["math_teachers"], "carol")

    report = ldap_sync()

    assert report.changed_memberships == [MembershipChange("carol", "Maths 1A", "teacher")]
    assert report.added_memberships == report.removed_memberships == []


def test_person_removed_from_every_group_is_disabled_not_deleted_and_keeps_desktops(
    directory: LdapTree, small_school: dict[str, str]
) -> None:
    ldap_sync()
    bob = User.objects.get(username="bob")
    desktop = Desktop.objects.create(
        name="Bob's desktop", owner=bob, hardware=HardwareProfileFactory.create()
    )
    directory.remove_member(small_school["math_students"], "bob")

    report = ldap_sync()

    assert report.disabled_users == ["bob"]
    assert report.removed_memberships == [MembershipChange("bob", "Maths 1A", "student")]
    bob.refresh_from_db()
    assert not bob.is_active
    assert Desktop.objects.get(pk=desktop.pk).owner == bob
    assert "Disabled, not deleted" in str(report)
    assert not ldap_sync().has_changes

    directory.add_member(small_school["art"], "bob")
    report = ldap_sync()

    assert report.reactivated_users == ["bob"]
    assert User.objects.get(pk=bob.pk).is_active
    assert not LdapAccount.objects.get(user=bob).disabled_by_sync


def test_person_deleted_from_the_directory_is_disabled(
    directory: LdapTree, small_school: dict[str, str]
) -> None:
    ldap_sync()
    directory.remove_member(small_school["art"], "dave")
    directory.delete(directory.people["dave"])

    report = ldap_sync()

    assert report.disabled_users == ["dave"]
    assert User.objects.filter(username="dave", is_active=False).exists()


def test_sync_does_not_enable_people_an_administrator_disabled(
    small_school: dict[str, str],
) -> None:
    ldap_sync()
    User.objects.filter(username="alice").update(is_active=False)

    report = ldap_sync()

    assert report.reactivated_users == []
    assert not User.objects.get(username="alice").is_active


def test_broken_entries_are_reported_and_skipped(
    directory: LdapTree, small_school: dict[str, str], school: School
) -> None:
    no_uid = directory.add(
        f"cn=No Uid,{directory.people_dn}",
        {"objectClass": "inetOrgPerson", "cn": "No Uid", "sn": "Uid"},
    )
    ghost = f"uid=ghost,{directory.people_dn}"
    invalid = directory.add(
        f"cn=Bad Name,{directory.people_dn}",
        {"objectClass": "inetOrgPerson", "cn": "Bad Name", "sn": "Name", "uid": "bad name"},
    )
    broken = directory.add_group_of_names("broken", ["alice", ghost, no_uid, invalid])
    directory.add_member(small_school["art"], "nobody")  # memberUid without a person
    mapping(broken, "Broken course", school=school)

    report = ldap_sync()

    reasons: dict[str, list[str]] = defaultdict(list)
    for entry in report.skipped:
        reasons[entry.dn].append(entry.reason)
    assert reasons[ghost] == [f"the member does not exist; listed in {broken}"]
    assert reasons[no_uid] == [f"the member has no uid; listed in {broken}"]
    assert reasons[invalid] == [
        "uid “bad name” is not a valid username",
        f"the member was skipped (see its own entry); listed in {broken}",
    ]
    assert reasons[small_school["art"]] == [
        "memberUid “nobody” is not a person under the search base"
    ]
    assert memberships("Broken course") == {"alice": "student"}
    assert "alice" in report.created_users and "ghost" not in report.created_users
    assert "entries skipped" in str(report).splitlines()[0]
    assert not ldap_sync().has_changes


def test_missing_group_leaves_its_course_alone_and_disables_nobody(
    directory: LdapTree, small_school: dict[str, str], school: School
) -> None:
    ldap_sync()
    directory.delete(small_school["art"])

    report = ldap_sync()

    assert not report.has_changes
    assert report.skipped[0].reason == "the group does not exist"
    assert any("Nobody was disabled" in warning for warning in report.warnings)
    assert set(memberships("Art")) == {"alice", "dave", "paul"}
    assert User.objects.filter(is_active=False).count() == 0


def test_local_accounts_in_a_synced_course_are_left_alone(
    small_school: dict[str, str], school: School
) -> None:
    ldap_sync()
    local = UserFactory.create(username="localhelper", school=school)
    MembershipFactory.create(user=local, course=Course.objects.get(name="Maths 1A"))

    report = ldap_sync()

    assert not report.has_changes
    assert "localhelper" in memberships("Maths 1A")


def code_for(course: Course, role: CourseRole) -> str:
    admin = UserFactory.create(role=Role.ADMIN)
    return enrolment_code_regenerate(actor=admin, course=course, role=role).code


def test_a_directory_teacher_who_joins_a_synced_course_with_a_code_stays_after_the_sync(
    small_school: dict[str, str], school: School
) -> None:
    """Tina teaches Maths 1A through the directory; she joins Art with a teacher code."""
    ldap_sync()
    art = Course.objects.get(name="Art")
    tina = User.objects.get(username="tina")
    course_join_with_code(user=tina, code=code_for(art, CourseRole.TEACHER))

    report = ldap_sync()

    assert memberships("Art")["tina"] == CourseRole.TEACHER
    assert CourseMembership.objects.get(user=tina, course=art).source == "code"
    assert CourseMembership.objects.get(user=tina, course__name="Maths 1A").source == "directory"
    assert report.removed_memberships == []


def test_a_directory_student_made_teacher_by_a_code_stays_teacher_after_the_sync(
    small_school: dict[str, str],
) -> None:
    ldap_sync()
    maths = Course.objects.get(name="Maths 1A")
    alice = User.objects.get(username="alice")  # a student of Maths 1A by the directory
    course_join_with_code(user=alice, code=code_for(maths, CourseRole.TEACHER))

    ldap_sync()

    assert memberships("Maths 1A")["alice"] == CourseRole.TEACHER
    assert CourseMembership.objects.get(user=alice, course=maths).source == "code"


def test_a_membership_given_by_hand_to_a_directory_person_survives_the_sync(
    small_school: dict[str, str], school: School
) -> None:
    ldap_sync()
    dave = User.objects.get(username="dave")  # in Art only
    MembershipFactory.create(user=dave, course=Course.objects.get(name="Maths 1A"))

    report = ldap_sync()

    assert memberships("Maths 1A")["dave"] == CourseRole.STUDENT
    assert CourseMembership.objects.get(user=dave, course__name="Maths 1A").source == "manual"
    assert not report.has_changes


def test_the_sync_still_removes_what_the_directory_gave(
    small_school: dict[str, str], directory: LdapTree
) -> None:
    ldap_sync()
    directory.remove_member(small_school["math_students"], "bob")

    report = ldap_sync()

    assert "bob" not in memberships("Maths 1A")
    assert [change.username for change in report.removed_memberships] == ["bob"]


def test_a_membership_given_by_code_and_then_by_the_directory_keeps_its_source(
    small_school: dict[str, str], school: School, directory: LdapTree
) -> None:
    """Given by a code first, later listed by a group too: the code's, so the directory
    taking the person out of the group later does not take them out of the course."""
    ldap_sync()
    maths = Course.objects.get(name="Maths 1A")
    dave = User.objects.get(username="dave")
    course_join_with_code(user=dave, code=code_for(maths, CourseRole.STUDENT))
    directory.add_member(small_school["math_students"], "dave")

    assert not ldap_sync().added_memberships
    assert CourseMembership.objects.get(user=dave, course=maths).source == "code"

    directory.remove_member(small_school["math_students"], "dave")
    ldap_sync()

    assert memberships("Maths 1A")["dave"] == CourseRole.STUDENT


def test_a_teacher_group_raises_a_membership_by_hand_but_never_lowers_one(
    small_school: dict[str, str], school: School, directory: LdapTree
) -> None:
    ldap_sync()
    maths = Course.objects.get(name="Maths 1A")
    dave = User.objects.get(username="dave")
    MembershipFactory.create(user=dave, course=maths, role=CourseRole.STUDENT)
    directory.add_member(small_school["math_teachers"], "dave")
    alice = CourseMembership.objects.get(user__username="alice", course=maths)
    alice.role, alice.source = CourseRole.TEACHER, "manual"
    alice.save()

    ldap_sync()

    assert memberships("Maths 1A")["dave"] == CourseRole.TEACHER  # raised
    assert memberships("Maths 1A")["alice"] == CourseRole.TEACHER  # not lowered
    assert CourseMembership.objects.get(user=dave, course=maths).source == "manual"


def test_people_in_no_synced_group_are_not_created_and_signing_in_alone_does_not_disable(
    small_school: dict[str, str], directory: LdapTree
) -> None:
    """As the README says: the sync makes only people of synced groups, and disables only
    those it has seen in one; someone who just signs in stays as they are."""
    directory.add_person("walter", password="walter-password")
    directory.add_person("xena")
    walter = authenticate(None, username="walter", password="walter-password")
    assert isinstance(walter, User)

    ldap_sync()

    assert not User.objects.filter(username="xena").exists()
    walter.refresh_from_db()
    assert walter.is_active and not walter.memberships.exists()


def test_someone_who_only_signed_in_and_left_the_directory_is_disabled_by_the_sync(
    small_school: dict[str, str], directory: LdapTree
) -> None:
    """In no mapped group, created at first sign-in: the sync disables them (not deletes)
    once the directory no longer has them, and enables them again if they come back."""
    directory.add_person("walter", password="walter-password")
    walter = authenticate(None, username="walter", password="walter-password")
    assert isinstance(walter, User)
    desktop = Desktop.objects.create(
        name="Walter's desktop", owner=walter, hardware=HardwareProfileFactory.create()
    )
    ldap_sync()
    directory.delete(directory.people["walter"])

    report = ldap_sync()

    assert report.disabled_users == ["walter"]
    assert report.counts()["disabled_users"] == 1
    walter.refresh_from_db()
    assert not walter.is_active and Desktop.objects.get(pk=desktop.pk).owner == walter
    assert not ldap_sync().has_changes

    directory.add_person("walter", password="walter-password")
    report = ldap_sync()

    assert report.reactivated_users == ["walter"]
    assert authenticate(None, username="walter", password="walter-password") == walter


def test_a_directory_with_nothing_mapped_still_disables_who_left_it(
    directory: LdapTree,
) -> None:
    for uid in ("walter", "xena"):
        directory.add_person(uid, password=f"{uid}-password")
        assert authenticate(None, username=uid, password=f"{uid}-password") is not None
    directory.delete(directory.people["xena"])

    report = ldap_sync()

    assert report.disabled_users == ["xena"]
    assert "only people who left the directory were looked for there" in report.warnings[0]
    assert User.objects.get(username="walter").is_active


def test_people_the_user_filter_no_longer_finds_count_as_gone(
    directory: LdapTree, settings: Any
) -> None:
    """A school that lets only some people in by the user filter: whoever it stops
    finding is disabled at the next sync."""
    for uid in ("walter", "xena"):
        directory.add_person(uid, password=f"{uid}-password")
        directory.modify(directory.people[uid], "employeeType", ["isard"])
    settings.ISARD_LDAP_USER_FILTER = "(&(uid=%(user)s)(employeeType=isard))"
    for uid in ("walter", "xena"):
        assert authenticate(None, username=uid, password=f"{uid}-password") is not None
    directory.modify(directory.people["xena"], "employeeType", ["former"])

    report = ldap_sync()

    assert report.disabled_users == ["xena"]
    assert authenticate(None, username="xena", password="xena-password") is None


def test_a_search_base_with_nobody_under_it_disables_nobody(
    directory: LdapTree, settings: Any
) -> None:
    directory.add_person("walter", password="walter-password")
    assert authenticate(None, username="walter", password="walter-password") is not None
    settings.ISARD_LDAP_USER_SEARCH_BASE = directory.groups_dn  # no people there

    report = ldap_sync()

    assert report.disabled_users == []
    assert any("Nobody was disabled: no person was found" in w for w in report.warnings)
    assert User.objects.get(username="walter").is_active


def test_a_group_listing_other_groups_brings_their_members_at_any_depth(
    directory: LdapTree, school: School
) -> None:
    """Year 1 lists class 1A (groupOfNames) and class 1B (groupOfUniqueNames), and 1B
    lists the posixGroup of its late joiners: everyone of them is in Year 1's course."""
    for uid in ("ana", "ben", "cai", "dov"):
        directory.add_person(uid)
    late = directory.add_posix_group("late-1b", ["dov"])
    class_1a = directory.add_group_of_names("class-1a", ["ana"])
    class_1b = directory.add_group_of_unique_names("class-1b", ["ben", late])
    year_1 = directory.add_group_of_names("year-1", ["cai", class_1a, class_1b])
    mapping(year_1, "Year 1", school=school)

    report = ldap_sync()

    assert set(memberships("Year 1")) == {"ana", "ben", "cai", "dov"}
    assert report.skipped == []
    directory.remove_member(class_1b, late)
    ldap_sync()
    assert set(memberships("Year 1")) == {"ana", "ben", "cai"}


def test_groups_that_list_each_other_do_not_loop(directory: LdapTree, school: School) -> None:
    for uid in ("eve", "fay"):
        directory.add_person(uid)
    first = directory.add_group_of_names("loop-a", ["eve"])
    second = directory.add_group_of_names("loop-b", ["fay", first])
    directory.add_member(first, second)
    mapping(first, "Loop", school=school)

    report = ldap_sync()

    assert set(memberships("Loop")) == {"eve", "fay"}
    assert report.skipped == []


def test_groups_nested_too_deep_are_reported_not_read(directory: LdapTree, school: School) -> None:
    directory.add_person("gil")
    directory.add_person("hal")
    inner = directory.add_group_of_names("level-12", ["gil"])
    for level in range(11, 0, -1):
        inner = directory.add_group_of_names(f"level-{level}", [inner])
    directory.add_member(inner, "hal")
    mapping(inner, "Deep", school=school)

    report = ldap_sync()

    assert set(memberships("Deep")) == {"hal"}
    assert ["nested more than 10 deep" in entry.reason for entry in report.skipped] == [True]


def test_active_directory_groups_feed_courses_nested_and_empty_too(
    directory: LdapTree, school: School
) -> None:
    for uid in ("quin", "rosa"):
        directory.add_person(uid)
    class_2a = directory.add_active_directory_group("Class 2A", ["rosa"])
    year_2 = directory.add_active_directory_group("Year 2", ["quin", class_2a])
    empty = directory.add_active_directory_group("Chess club", [])
    mapping(year_2, "Year 2", school=school)
    mapping(empty, "Chess club", school=school)

    report = ldap_sync()

    assert set(memberships("Year 2")) == {"quin", "rosa"}
    assert memberships("Chess club") == {}
    assert report.skipped == []


def test_a_nested_teacher_group_gives_the_role(
    directory: LdapTree, small_school: dict[str, str], settings: Any
) -> None:
    science = directory.add_group_of_names("science-teachers", ["bob"])
    teachers = directory.add_group_of_names("teachers", ["tina", science])
    settings.ISARD_LDAP_ROLE_GROUPS = {"teacher": teachers}

    ldap_sync()

    assert User.objects.get(username="bob").role == Role.TEACHER


def test_mapping_to_an_existing_course_uses_it(directory: LdapTree, school: School) -> None:
    course = CourseFactory.create(school=school, name="Physics")
    directory.add_person("zoe")
    group = directory.add_group_of_names("physics", ["zoe"])
    LdapGroupMapping.objects.create(group_dn=group, school=school, course=course)

    report = ldap_sync()

    assert report.created_courses == []
    assert memberships("Physics") == {"zoe": "student"}


def test_role_groups_set_roles_highest_first(
    directory: LdapTree, small_school: dict[str, str], settings: Any
) -> None:
    teachers = directory.add_group_of_names("teachers", ["tina", "bob"])
    admins = directory.add_group_of_names("admins", ["bob", "carol"])
    settings.ISARD_LDAP_ROLE_GROUPS = {"teacher": teachers, "admin": admins}

    ldap_sync()

    roles = dict(User.objects.values_list("username", "role"))
    assert (roles["bob"], roles["carol"], roles["tina"], roles["alice"]) == (
        Role.ADMIN,
        Role.ADMIN,
        Role.TEACHER,
        Role.STUDENT,
    )

    directory.remove_member(admins, "bob")
    report = ldap_sync()

    assert report.role_changes == ["bob: admin → teacher"]


def test_dry_run_reports_without_saving(small_school: dict[str, str]) -> None:
    report = ldap_sync(dry_run=True)

    assert len(report.created_users) == 6
    assert str(report).startswith("LDAP group sync (dry run, nothing saved): 6 people created")
    assert not User.objects.exists()
    assert not Course.objects.exists()
    assert not LdapSyncRun.objects.exists()


def test_only_administrators_may_run_the_sync(small_school: dict[str, str]) -> None:
    with pytest.raises(PermissionDeniedError):
        ldap_sync(actor=UserFactory.create(role=Role.TEACHER))

    report = ldap_sync(actor=UserFactory.create(role=Role.ADMIN))

    assert report.has_changes


def test_wrong_search_base_changes_nothing(
    small_school: dict[str, str], directory: LdapTree, settings: Any
) -> None:
    ldap_sync()
    settings.ISARD_LDAP_USER_SEARCH_BASE = directory.groups_dn  # no people there

    with pytest.raises(DirectoryError, match="no person was found"):
        ldap_sync()

    assert User.objects.filter(is_active=False).count() == 0


def test_unreachable_directory_fails_fast_with_a_clear_error(
    small_school: dict[str, str], settings: Any
) -> None:
    settings.ISARD_LDAP_SERVER_URI = f"ldap://127.0.0.1:{free_port()}"

    started = time.monotonic()
    with pytest.raises(DirectoryUnreachableError, match="does not answer"):
        ldap_sync()

    assert time.monotonic() - started < 5


def test_refused_service_account_is_named(small_school: dict[str, str], settings: Any) -> None:
    settings.ISARD_LDAP_BIND_PASSWORD = "wrong"

    with pytest.raises(DirectoryError, match="refused the service account"):
        ldap_sync()


def test_management_command_prints_the_report(small_school: dict[str, str]) -> None:
    output = StringIO()

    call_command("ldap_sync", stdout=output)

    assert output.getvalue().startswith("LDAP group sync: 6 people created")
    assert "Memberships added: " in output.getvalue()


def test_management_command_turns_errors_into_a_message(settings: Any) -> None:
    settings.ISARD_LDAP_SERVER_URI = ""

    with pytest.raises(CommandError, match="LDAP is not configured"):
        call_command("ldap_sync")


def test_task_runs_the_sync_and_returns_counts(small_school: dict[str, str]) -> None:
    counts = ldap_sync_task()

    assert counts["created_users"] == 6 and counts["skipped"] == 0
    assert ldap_sync_task()["added_memberships"] == 0


def test_task_does_nothing_without_ldap(settings: Any) -> None:
    settings.ISARD_LDAP_SERVER_URI = ""

    assert ldap_sync_task() == {}


def test_task_lets_celery_retry_an_unreachable_directory(
    small_school: dict[str, str], settings: Any
) -> None:
    settings.ISARD_LDAP_SERVER_URI = f"ldap://127.0.0.1:{free_port()}"

    with pytest.raises(DirectoryUnreachableError):
        ldap_sync_task()


def test_sync_of_500_people_in_20_groups(
    directory: LdapTree, school: School, capsys: pytest.CaptureFixture[str]
) -> None:
    """The benchmark for BENCHMARKS.md: half groupOfNames, half posixGroup."""
    people = [f"pupil{number:03d}" for number in range(500)]
    for uid in people:
        directory.add_person(uid)
    for number in range(20):
        members = people[number * 25 : (number + 1) * 25]
        if number % 2:
            group = directory.add_posix_group(f"class-{number:02d}", members)
        else:
            group = directory.add_group_of_names(f"class-{number:02d}", members)
        mapping(group, f"Class {number:02d}", school=school)

    started = time.monotonic()
    first = ldap_sync()
    first_seconds = time.monotonic() - started
    started = time.monotonic()
    second = ldap_sync()
    second_seconds = time.monotonic() - started

    assert (len(first.created_users), len(first.created_courses)) == (500, 20)
    assert len(first.added_memberships) == 500 and first.skipped == []
    assert not second.has_changes
    assert CourseMembership.objects.count() == 500
    with capsys.disabled():
        print(
            f"\nLDAP sync of 500 people in 20 groups: first run {first_seconds:.2f} s, "
            f"second (no changes) {second_seconds:.2f} s"
        )


def test_report_summary_is_readable() -> None:
    report = SyncReport(
        created_users=[f"user{number}" for number in range(25)],
        disabled_users=["bob"],
        seconds=1.5,
    )

    text = str(report)

    assert text.splitlines()[0] == (
        "LDAP group sync: 25 people created, 1 person disabled (1.50 s)."
    )
    assert "user19 and 5 more" in text
    assert (
        "Disabled, not deleted (they left the directory or every synced group; desktops kept): bob"
    ) in text
