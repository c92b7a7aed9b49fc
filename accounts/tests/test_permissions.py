"""The one role policy: two people of each role, in two schools, and what each may reach."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from accounts import permissions
from accounts.choices import CourseRole, Role
from accounts.models import Course, School, User
from accounts.tests.factories import CourseFactory, MembershipFactory, SchoolFactory, UserFactory
from desktops import permissions as desktop_rules
from desktops.models import Desktop
from templates_app import permissions as template_rules
from templates_app.models import Template
from templates_app.tests.factories import HardwareProfileFactory

pytestmark = pytest.mark.django_db


@dataclass
class Campus:
    school: School
    manager: User
    teacher: User
    other_teacher: User
    student: User
    other_student: User
    course: Course
    student_desktop: Desktop
    other_student_desktop: Desktop
    teacher_template: Template


def campus(slug: str) -> Campus:
    school = SchoolFactory.create(slug=slug, name=slug)

    def person(role: Role, name: str) -> User:
        return UserFactory.create(username=f"{slug}-{name}", role=role, school=school)

    manager = person(Role.MANAGER, "manager")
    teacher = person(Role.TEACHER, "teacher")
    other_teacher = person(Role.TEACHER, "teacher2")
    student = person(Role.STUDENT, "student")
    other_student = person(Role.STUDENT, "student2")
    course = CourseFactory.create(school=school, name=f"{slug} 1A")
    MembershipFactory.create(course=course, user=teacher, role=CourseRole.TEACHER)
    MembershipFactory.create(course=course, user=student, role=CourseRole.STUDENT)
    hardware = HardwareProfileFactory.create()
    student_desktop = Desktop.objects.create(
        name="mine", owner=student, course=course, hardware=hardware
    )
    # The other student's desktop is outside any course: only they (and managers) see it.
    other_desktop = Desktop.objects.create(name="theirs", owner=other_student, hardware=hardware)
    template = Template.objects.create(name=f"{slug} template", owner=teacher, hardware=hardware)
    return Campus(
        school,
        manager,
        teacher,
        other_teacher,
        student,
        other_student,
        course,
        student_desktop,
        other_desktop,
        template,
    )


@pytest.fixture
def north() -> Campus:
    return campus("north")


@pytest.fixture
def south() -> Campus:
    return campus("south")


@pytest.fixture
def admin() -> Any:
    return UserFactory.create(username="root", role=Role.ADMIN, school=None)


def test_student_cannot_see_or_act_on_another_students_desktop(north: Campus) -> None:
    assert desktop_rules.can_act_on_desktop(north.student, north.student_desktop)
    assert not desktop_rules.can_act_on_desktop(north.student, north.other_student_desktop)
    assert not desktop_rules.can_act_on_desktop(north.other_student, north.student_desktop)
    assert list(desktop_rules.desktops_visible_to(north.student)) == [north.student_desktop]


def test_teacher_reaches_the_desktops_of_the_courses_they_teach_only(north: Campus) -> None:
    assert desktop_rules.can_act_on_desktop(north.teacher, north.student_desktop)
    assert not desktop_rules.can_act_on_desktop(north.teacher, north.other_student_desktop)
    # A teacher of the same school who does not teach the course reaches none of it.
    assert not desktop_rules.can_act_on_desktop(north.other_teacher, north.student_desktop)
    assert not desktop_rules.desktops_visible_to(north.other_teacher).exists()


def test_manager_reaches_their_own_school_and_nothing_of_another(
    north: Campus, south: Campus
) -> None:
    visible = set(desktop_rules.desktops_visible_to(north.manager))
    assert visible == {north.student_desktop, north.other_student_desktop}
    assert not desktop_rules.can_act_on_desktop(north.manager, south.student_desktop)
    assert set(permissions.courses_visible_to(north.manager)) == {north.course}
    assert permissions.can_manage_course(north.manager, north.course)
    assert not permissions.can_manage_course(north.manager, south.course)
    assert permissions.can_manage_user(north.manager, north.student)
    assert not permissions.can_manage_user(north.manager, south.student)
    assert not permissions.can_manage_user(south.manager, north.manager)


def test_manager_cannot_manage_an_admin(north: Campus, admin: User) -> None:
    admin.school = north.school
    admin.save()
    assert not permissions.can_manage_user(north.manager, admin)
    assert permissions.can_manage_user(admin, north.manager)


def test_admin_reaches_every_school(north: Campus, south: Campus, admin: User) -> None:
    assert desktop_rules.desktops_visible_to(admin).count() == 4
    assert desktop_rules.can_act_on_desktop(admin, south.other_student_desktop)
    assert permissions.can_manage_course(admin, south.course)


def test_courses_visible_and_taught(north: Campus) -> None:
    assert list(permissions.courses_visible_to(north.student)) == [north.course]
    assert not permissions.courses_visible_to(north.other_student).exists()
    assert not permissions.courses_taught_by(north.student).exists()
    assert permissions.can_manage_course(north.teacher, north.course)
    assert not permissions.can_manage_course(north.other_teacher, north.course)


def test_people_visible_to_a_teacher_are_their_students(north: Campus, south: Campus) -> None:
    assert set(permissions.users_visible_to(north.teacher)) == {north.teacher, north.student}
    assert list(permissions.users_visible_to(north.student)) == [north.student]
    assert south.student not in permissions.users_visible_to(north.manager)


def test_templates_are_managed_by_their_owner_and_school_manager(
    north: Campus, south: Campus
) -> None:
    assert template_rules.can_manage_template(north.teacher, north.teacher_template)
    assert not template_rules.can_manage_template(north.other_teacher, north.teacher_template)
    assert not template_rules.can_manage_template(north.student, north.teacher_template)
    assert template_rules.can_manage_template(north.manager, north.teacher_template)
    assert not template_rules.can_manage_template(south.manager, north.teacher_template)


def test_schools_media_and_quotas_a_manager_reaches(north: Campus, south: Campus) -> None:
    from accounts.models import Quota
    from templates_app.models import Media

    assert list(permissions.schools_visible_to(north.manager)) == [north.school]
    assert list(permissions.schools_visible_to(north.student)) == [north.school]
    north_media = Media.objects.create(name="n", owner=north.teacher, path="/x/n.iso")
    south_media = Media.objects.create(name="s", owner=south.teacher, path="/x/s.iso")
    assert list(template_rules.media_managed_by(north.manager)) == [north_media]
    assert list(template_rules.media_managed_by(north.teacher)) == [north_media]
    assert not template_rules.media_managed_by(north.student).exists()
    assert south_media not in template_rules.media_managed_by(north.other_teacher)

    default = Quota.objects.create(role=Role.STUDENT, max_desktops=1)
    mine = Quota.objects.create(course=north.course, max_desktops=2)
    theirs = Quota.objects.create(user=south.student, max_desktops=3)
    assert list(permissions.quotas_managed_by(north.manager)) == [mine]
    assert not permissions.quotas_managed_by(north.teacher).exists()
    assert permissions.can_manage_quota(north.manager, Quota(user=north.student))
    assert not permissions.can_manage_quota(north.manager, default)
    assert not permissions.can_manage_quota(north.manager, theirs)
    assert not permissions.can_manage_quota(north.manager, Quota(school=south.school))


def test_a_manager_assigns_roles_below_admin_inside_their_school(
    north: Campus, south: Campus, admin: User
) -> None:
    def may(actor: User, role: str, school: School | None, superuser: bool = False) -> bool:
        return permissions.can_assign_role(
            actor, role=role, school_id=school.pk if school else None, superuser=superuser
        )

    assert may(north.manager, Role.TEACHER, north.school)
    assert may(north.manager, Role.MANAGER, north.school)
    assert not may(north.manager, Role.ADMIN, north.school)
    assert not may(north.manager, Role.STUDENT, north.school, superuser=True)
    assert not may(north.manager, Role.STUDENT, south.school)
    assert not may(north.manager, Role.STUDENT, None)
    assert not may(north.teacher, Role.STUDENT, north.school)
    assert may(admin, Role.ADMIN, None, superuser=True)
