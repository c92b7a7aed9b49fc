"""Who teaches which class, against a real slapd: a teachers' group per course, an
attribute on the teachers' entries, a naming rule; and the checks of what is typed."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import authenticate
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse

from accounts.choices import CourseRole, MembershipSource, Role
from accounts.ldap.report import MembershipChange
from accounts.ldap.sync import ldap_sync
from accounts.models import Course, CourseMembership, LdapGroupMapping, School, User
from accounts.services.enrolment import course_join_with_code, enrolment_code_regenerate
from accounts.tests.factories import SchoolFactory, UserFactory
from accounts.tests.slapd import (  # noqa: F401  (fixtures)
    LdapTree,
    directory_fixture,
    slapd_fixture,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def school() -> School:
    return SchoolFactory.create(name="North school", slug="north")


def memberships(course_name: str) -> dict[str, tuple[str, str]]:
    """username -> (course role, source)."""
    return {
        username: (role, source)
        for username, role, source in CourseMembership.objects.filter(
            course__name=course_name
        ).values_list("user__username", "role", "source")
    }


def roles_in(course_name: str) -> dict[str, str]:
    return {username: role for username, (role, _source) in memberships(course_name).items()}


def students_mapping(group_dn: str, course_name: str, school: School, **teachers: Any) -> Any:
    mapping = LdapGroupMapping(
        group_dn=group_dn, school=school, course_name=course_name, **teachers
    )
    mapping.full_clean()
    mapping.save()
    return mapping


# --- a teachers' group per course ---------------------------------------------------------


@pytest.fixture
def group_per_class(directory: LdapTree, school: School) -> dict[str, str]:
    """1A and 1B, each with its students' group and its teachers' group (cn=teachers-1a)."""
    for uid in ("ana", "ben", "cai", "tom", "ute", "val"):
        directory.add_person(uid)
    groups = {
        "1a": directory.add_group_of_names("1a", ["ana", "ben"]),
        "1b": directory.add_group_of_names("1b", ["cai"]),
        "teachers-1a": directory.add_group_of_names("teachers-1a", ["tom", "ute"]),
        "teachers-1b": directory.add_group_of_names("teachers-1b", ["ute"]),
    }
    students_mapping(groups["1a"], "1A", school, teachers_group_dn=groups["teachers-1a"])
    students_mapping(groups["1b"], "1B", school, teachers_group_dn=groups["teachers-1b"])
    return groups


def test_a_teachers_group_per_course_makes_its_members_the_courses_teachers(
    group_per_class: dict[str, str],
) -> None:
    report = ldap_sync()

    directory_given = MembershipSource.DIRECTORY
    assert memberships("1A") == {
        "ana": (CourseRole.STUDENT, directory_given),
        "ben": (CourseRole.STUDENT, directory_given),
        "tom": (CourseRole.TEACHER, directory_given),
        "ute": (CourseRole.TEACHER, directory_given),
    }
    assert roles_in("1B") == {"cai": CourseRole.STUDENT, "ute": CourseRole.TEACHER}
    assert report.skipped == [] and report.warnings == []
    # They may teach: the directory made them a course's teachers, so teachers at least.
    assert dict(User.objects.values_list("username", "role")) == {
        "ana": Role.STUDENT,
        "ben": Role.STUDENT,
        "cai": Role.STUDENT,
        "tom": Role.TEACHER,
        "ute": Role.TEACHER,
    }
    assert not ldap_sync().has_changes


def test_leaving_the_teachers_group_removes_only_the_teaching_the_directory_gave(
    directory: LdapTree, group_per_class: dict[str, str], school: School
) -> None:
    ldap_sync()
    course_1b = Course.objects.get(name="1B")
    admin = UserFactory.create(role=Role.ADMIN)
    code = enrolment_code_regenerate(actor=admin, course=course_1b, role=CourseRole.TEACHER)
    course_join_with_code(user=User.objects.get(username="tom"), code=code.code)
    directory.remove_member(group_per_class["teachers-1a"], "tom")
    directory.add_member(group_per_class["teachers-1b"], "val")
    directory.remove_member(group_per_class["teachers-1b"], "ute")

    report = ldap_sync()

    assert report.removed_memberships == [
        MembershipChange("tom", "1A", "teacher"),
        MembershipChange("ute", "1B", "teacher"),
    ]
    assert report.added_memberships == [MembershipChange("val", "1B", "teacher")]
    assert roles_in("1A") == {"ana": "student", "ben": "student", "ute": "teacher"}
    # Tom joined 1B with a teacher code: that stays. In no synced group any more, he is
    # disabled all the same (not deleted), as anyone who leaves every synced group.
    assert memberships("1B")["tom"] == (CourseRole.TEACHER, MembershipSource.CODE)
    assert report.disabled_users == ["tom"]
    assert not ldap_sync().has_changes


def test_an_unreadable_teachers_group_leaves_its_course_alone(
    directory: LdapTree, group_per_class: dict[str, str]
) -> None:
    ldap_sync()
    directory.delete(group_per_class["teachers-1b"])

    report = ldap_sync()

    assert roles_in("1B") == {"cai": "student", "ute": "teacher"}
    assert report.skipped[0].reason == "the group does not exist"
    assert any("Nobody was disabled" in warning for warning in report.warnings)
    assert not report.has_changes


def test_a_course_teacher_stays_a_teacher_at_sign_in_when_the_role_groups_do_not_list_them(
    directory: LdapTree, group_per_class: dict[str, str], settings: Any
) -> None:
    """Role groups that list only managers: a class's teachers still teach after signing in."""
    directory.add_person("mia", password="mia-password")
    directory.modify(directory.people["tom"], "userPassword", ["tom-password"])
    settings.ISARD_LDAP_ROLE_GROUPS = {"manager": directory.add_group_of_names("managers", ["mia"])}
    ldap_sync()

    tom = authenticate(None, username="tom", password="tom-password")
    ana = User.objects.get(username="ana")

    assert isinstance(tom, User)
    tom.refresh_from_db()
    assert tom.role == Role.TEACHER
    assert ana.role == Role.STUDENT
    assert not ldap_sync().has_changes


# --- an attribute of the teachers' entries ------------------------------------------------


@pytest.fixture
def class_attribute(directory: LdapTree, school: School, settings: Any) -> dict[str, str]:
    """Teachers list the classes they teach in departmentNumber; students carry their own
    class there too, and the teachers' role group tells them apart."""
    for uid, classes in (("ana", ["1a"]), ("cai", ["2b"]), ("tom", ["1A", "2b"]), ("ute", ["2b"])):
        directory.add_person(uid)
        directory.modify(directory.people[uid], "departmentNumber", classes)
    groups = {
        "1a": directory.add_group_of_names("1a", ["ana"]),
        "2b": directory.add_group_of_names("students-2b", ["cai"]),
        "teachers": directory.add_group_of_names("teachers", ["tom", "ute"]),
    }
    settings.ISARD_LDAP_ROLE_GROUPS = {"teacher": groups["teachers"]}
    students_mapping(groups["1a"], "1A", school, teachers_attribute="departmentNumber")
    students_mapping(
        groups["2b"],
        "2B",
        school,
        teachers_attribute="departmentNumber",
        teachers_attribute_value="2B",
    )
    return groups


def test_teachers_attribute_lists_the_classes_they_teach(
    class_attribute: dict[str, str],
) -> None:
    report = ldap_sync()

    # Matched against the group's name (1a) or the value given (2B), case aside; Ana and
    # Cai carry their class too but are not in the teachers' role group.
    assert roles_in("1A") == {"ana": CourseRole.STUDENT, "tom": CourseRole.TEACHER}
    assert roles_in("2B") == {
        "cai": CourseRole.STUDENT,
        "tom": CourseRole.TEACHER,
        "ute": CourseRole.TEACHER,
    }
    assert memberships("2B")["ute"][1] == MembershipSource.DIRECTORY
    assert report.skipped == [] and report.warnings == []
    assert not ldap_sync().has_changes


def test_a_teacher_who_stops_teaching_a_class_leaves_it(
    directory: LdapTree, class_attribute: dict[str, str]
) -> None:
    ldap_sync()
    directory.modify(directory.people["tom"], "departmentNumber", ["2b"])

    report = ldap_sync()

    assert report.removed_memberships == [MembershipChange("tom", "1A", "teacher")]
    assert "tom" not in roles_in("1A") and roles_in("2B")["tom"] == CourseRole.TEACHER
    assert report.disabled_users == []


def test_without_role_groups_everyone_with_the_attribute_teaches(
    directory: LdapTree, school: School
) -> None:
    directory.add_person("ana")
    directory.add_person("tom")
    directory.modify(directory.people["tom"], "departmentNumber", ["1a"])
    students_mapping(
        directory.add_group_of_names("1a", ["ana"]),
        "1A",
        school,
        teachers_attribute="departmentNumber",
    )

    ldap_sync()

    assert roles_in("1A") == {"ana": CourseRole.STUDENT, "tom": CourseRole.TEACHER}
    assert User.objects.get(username="tom").role == Role.TEACHER


# --- a naming rule (Active Directory groups) ----------------------------------------------


@pytest.fixture
def named_groups(directory: LdapTree, school: School) -> dict[str, str]:
    """Active Directory groups named by rule: 3C and 3C-teachers; 3D has no teachers' group
    yet."""
    for uid in ("ana", "ben", "tom", "ute"):
        directory.add_person(uid)
    groups = {
        "3c": directory.add_active_directory_group("3C", ["ana"]),
        "3d": directory.add_active_directory_group("3D", ["ben"]),
        "3c-teachers": directory.add_active_directory_group("3C-teachers", ["tom"]),
        # A student group with a similar name is not a teachers' group.
        "3c-teachers-old": directory.add_active_directory_group("old-3C-teachers", ["ute"]),
    }
    for name in ("3c", "3d"):
        students_mapping(
            groups[name], name.upper(), school, teachers_group_pattern="{course}-teachers"
        )
    return groups


def test_a_naming_rule_finds_each_courses_teachers_group(
    named_groups: dict[str, str], directory: LdapTree
) -> None:
    report = ldap_sync()

    assert roles_in("3C") == {"ana": CourseRole.STUDENT, "tom": CourseRole.TEACHER}
    assert roles_in("3D") == {"ben": CourseRole.STUDENT}
    assert report.warnings == [
        f"No group named “3D-teachers” under {directory.groups_dn}: “3D” has no teachers "
        "from its naming rule."
    ]
    assert report.skipped == []

    directory.add_active_directory_group("3D-teachers", ["ute"])
    report = ldap_sync()

    assert report.added_memberships == [MembershipChange("ute", "3D", "teacher")]
    assert report.warnings == []
    assert not ldap_sync().has_changes


def test_leaving_or_deleting_a_named_teachers_group_removes_its_teachers(
    named_groups: dict[str, str], directory: LdapTree
) -> None:
    directory.add_member(named_groups["3c-teachers"], "ute")
    ldap_sync()
    directory.remove_member(named_groups["3c-teachers"], "ute")

    assert ldap_sync().removed_memberships == [MembershipChange("ute", "3C", "teacher")]

    directory.delete(named_groups["3c-teachers"])
    report = ldap_sync()

    assert report.removed_memberships == [MembershipChange("tom", "3C", "teacher")]
    assert roles_in("3C") == {"ana": CourseRole.STUDENT}


def test_two_groups_with_the_rules_name_are_reported_and_neither_used(
    named_groups: dict[str, str], directory: LdapTree
) -> None:
    other_ou = directory.add(
        f"ou=old,{directory.groups_dn}", {"objectClass": "organizationalUnit", "ou": "old"}
    )
    directory.add(f"cn=3C-teachers,{other_ou}", {"objectClass": "group", "cn": "3C-teachers"})

    report = ldap_sync()

    assert roles_in("3C") == {"ana": CourseRole.STUDENT}
    assert [entry.reason.split(" (")[0] for entry in report.skipped] == [
        "2 groups are named “3c-teachers”"
    ]


def test_without_a_group_search_base_the_rule_looks_beside_the_courses_group(
    named_groups: dict[str, str], settings: Any
) -> None:
    settings.ISARD_LDAP_GROUP_SEARCH_BASE = ""

    ldap_sync()

    assert roles_in("3C") == {"ana": CourseRole.STUDENT, "tom": CourseRole.TEACHER}


# --- what is typed is checked -------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"teachers_group_pattern": "teachers"}, "needs {course} exactly once"),
        ({"teachers_group_pattern": "{course}-{year}"}, "may hold no braces besides {course}"),
        ({"teachers_group_pattern": "{course}"}, "needs text besides {course}"),
        ({"teachers_group_pattern": "cn=teachers-{course}"}, "may not contain ="),
        ({"teachers_attribute": "school class"}, "is not an LDAP attribute name"),
        ({"teachers_attribute": "mail;binary"}, "is not an LDAP attribute name"),
        ({"teachers_group_dn": "teachers-1a"}, "is not a DN"),
        ({"teachers_attribute_value": "1a"}, "Give the teachers' attribute"),
        (
            {"role": CourseRole.TEACHER, "teachers_group_dn": "cn=t,dc=x"},
            "mapping of the course's students",
        ),
    ],
)
def test_mapping_input_is_checked_with_a_clear_error(
    school: School, fields: dict[str, str], message: str
) -> None:
    mapping = LdapGroupMapping(
        group_dn="cn=1a,ou=groups,dc=school,dc=test", school=school, course_name="1A", **fields
    )

    with pytest.raises(ValidationError) as error:
        mapping.full_clean()

    assert message in str(error.value)


def test_a_mapping_with_a_naming_rule_is_saved_from_the_admin(school: School) -> None:
    client = Client()
    client.force_login(UserFactory.create(role=Role.ADMIN, is_staff=True, is_superuser=True))
    form = {
        "group_dn": "cn=1a,ou=groups,dc=school,dc=test",
        "school": school.pk,
        "course_name": "1A",
        "role": CourseRole.STUDENT,
        "enabled": "on",
        "teachers_group_dn": "",
        "teachers_group_pattern": "teachers-{course",
        "teachers_attribute": "",
        "teachers_attribute_value": "",
    }
    url = reverse("admin:accounts_ldapgroupmapping_add")

    refused = client.post(url, form)
    saved = client.post(url, form | {"teachers_group_pattern": "teachers-{course}"})

    assert refused.status_code == 200
    assert "needs {course} exactly once" in refused.content.decode()
    assert saved.status_code == 302
    assert LdapGroupMapping.objects.get().teachers_group_pattern == "teachers-{course}"
    assert (
        "rule teachers-{course}"
        in client.get(reverse("admin:accounts_ldapgroupmapping_changelist")).content.decode()
    )
