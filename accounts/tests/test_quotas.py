"""Quotas per role, school, course and person: each limit kind, precedence, the messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.db import IntegrityError, transaction

from accounts.choices import CourseRole, Role
from accounts.models import Course, Quota, School, User
from accounts.quotas import KIND_BY_NAME, limits_for, quota_report
from accounts.tests.factories import CourseFactory, MembershipFactory, SchoolFactory, UserFactory
from desktops.choices import DesktopStatus
from desktops.models import Desktop
from desktops.services.lifecycle import desktop_start
from desktops.services.provisioning import (
    desktop_create,
    desktop_create_from_media,
    desktops_create_bulk,
)
from desktops.services.templating import template_from_desktop
from hypervisors.choices import PoolPurpose
from hypervisors.models import Disk
from hypervisors.services.pools import pool_for
from isard.core.errors import QuotaExceededError
from templates_app.choices import MediaStatus
from templates_app.models import HardwareProfile, Media
from templates_app.services.media import media_register
from templates_app.tests.factories import HardwareProfileFactory

pytestmark = pytest.mark.django_db

GIB = 1024**3


@pytest.fixture
def school() -> School:
    return SchoolFactory.create(name="North", slug="north")


@pytest.fixture
def course(school: School) -> Course:
    return CourseFactory.create(school=school, name="1A")


@pytest.fixture
def student(school: School, course: Course) -> User:
    user = UserFactory.create(username="alice", role=Role.STUDENT, school=school)
    MembershipFactory.create(course=course, user=user, role=CourseRole.STUDENT)
    return user


@pytest.fixture
def teacher(school: School, course: Course) -> User:
    user = UserFactory.create(username="tom", role=Role.TEACHER, school=school)
    MembershipFactory.create(course=course, user=user, role=CourseRole.TEACHER)
    return user


@pytest.fixture
def hardware() -> HardwareProfile:
    return HardwareProfileFactory.create(vcpus=2, memory_mib=1024, networks=[])


def make_desktop(
    owner: User,
    hardware: HardwareProfile,
    status: DesktopStatus = DesktopStatus.STOPPED,
    course: Course | None = None,
) -> Desktop:
    """A desktop row in a given status: the usage the quotas count."""
    return Desktop.objects.create(
        name=f"{owner.username}-{Desktop.objects.count()}",
        owner=owner,
        course=course,
        hardware=hardware,
        status=status,
    )


def raises_quota(function: Any, **kwargs: Any) -> QuotaExceededError:
    with pytest.raises(QuotaExceededError) as caught:
        function(**kwargs)
    assert caught.value.status_code == 422
    return caught.value


# --- each kind of limit ----------------------------------------------------------------------


def test_course_limit_on_running_desktops_refuses_a_start_and_says_why(
    student: User, course: Course, hardware: HardwareProfile
) -> None:
    Quota.objects.create(course=course, role=Role.STUDENT, max_running=2)
    make_desktop(student, hardware, DesktopStatus.STARTED, course)
    make_desktop(student, hardware, DesktopStatus.STARTING, course)
    third = make_desktop(student, hardware, DesktopStatus.STOPPED, course)

    error = raises_quota(desktop_start, actor=student, desktop=third)

    assert error.message == (
        "Your course “1A” allows 2 running desktops per student; you have 2 running."
    )
    assert error.extra["limit"] == "running"
    assert error.extra["scope"] == "course"
    assert (error.extra["allowed"], error.extra["in_use"]) == (2, 2)
    third.refresh_from_db()
    assert third.status == DesktopStatus.STOPPED


def test_a_stopped_desktop_frees_its_running_slot(
    student: User, course: Course, hardware: HardwareProfile
) -> None:
    Quota.objects.create(course=course, max_running=1)
    make_desktop(student, hardware, DesktopStatus.STOPPED, course)
    second = make_desktop(student, hardware, DesktopStatus.STOPPED, course)

    desktop_start(actor=student, desktop=second)

    assert second.status == DesktopStatus.STARTING


def test_vcpu_limit_counts_the_running_desktops_and_the_one_starting(
    student: User, hardware: HardwareProfile
) -> None:
    Quota.objects.create(role=Role.STUDENT, max_vcpus=3)
    make_desktop(student, hardware, DesktopStatus.STARTED)
    stopped = make_desktop(student, hardware)

    error = raises_quota(desktop_start, actor=student, desktop=stopped)

    assert error.message == (
        "The default for students allows 3 vCPUs in running desktops per student; "
        "you use 2 and this needs 2 more."
    )


def test_memory_limit_of_a_school_for_a_role(
    student: User, school: School, hardware: HardwareProfile
) -> None:
    Quota.objects.create(school=school, role=Role.STUDENT, max_memory_mib=1536)
    make_desktop(student, hardware, DesktopStatus.STARTED)
    stopped = make_desktop(student, hardware)

    error = raises_quota(desktop_start, actor=student, desktop=stopped)

    assert error.message == (
        "Your school “North” allows 1536 MiB of memory in running desktops per student; "
        "you use 1024 MiB and this needs 1024 MiB more."
    )
    assert error.extra["scope"] == "school"


def test_desktop_count_limit_refuses_a_new_desktop_and_creates_nothing(
    student: User, base_template: Any, hardware: HardwareProfile
) -> None:
    Quota.objects.create(user=student, max_desktops=1)
    make_desktop(student, hardware)
    make_desktop(student, hardware, DesktopStatus.DELETED)  # the recycle bin does not count

    error = raises_quota(desktop_create, actor=student, template=base_template, name="Second")

    assert error.message == "Your own quota allows 1 desktop; you have 1."
    assert not Desktop.objects.filter(name="Second").exists()


def test_desktop_from_media_counts_against_the_desktop_limit(
    teacher: User, pools: Any, hardware: HardwareProfile
) -> None:
    Quota.objects.create(role=Role.TEACHER, max_desktops=0)
    media = Media.objects.create(
        name="installer", owner=teacher, path="/nonexistent/i.iso", status=MediaStatus.READY
    )

    error = raises_quota(
        desktop_create_from_media,
        actor=teacher,
        media=media,
        hardware=hardware,
        name="Install",
    )

    assert "allows 0 desktops per teacher" in error.message


def test_disk_limit_counts_desktops_templates_and_media(
    student: User, base_template: Any, hardware: HardwareProfile
) -> None:
    Quota.objects.create(user=student, max_disk_gib=2)
    desktop = make_desktop(student, hardware, DesktopStatus.DELETED)
    desktop.disk = Disk.objects.create(
        pool=pool_for(PoolPurpose.DESKTOPS), path="/nonexistent/a.qcow2", actual_size_bytes=GIB
    )
    desktop.save()
    Media.objects.create(
        name="big", owner=student, path="/nonexistent/b.iso", size_bytes=GIB + GIB // 2
    )

    error = raises_quota(desktop_create, actor=student, template=base_template, name="More")

    assert error.message == "Your own quota allows 2 GiB of disk; you use 2.5 GiB."
    assert error.extra["limit"] == "disk"


def test_media_registration_is_refused_when_the_file_would_go_over_the_disk_limit(
    teacher: User, pools: Any, tmp_path: Path, settings: Any
) -> None:
    settings.ISARD_MEDIA_IMPORT_DIRS = [tmp_path]
    Quota.objects.create(user=teacher, max_disk_gib=1)
    iso = tmp_path / "big.iso"
    with iso.open("wb") as file:
        file.truncate(GIB + 1)  # sparse: costs nothing here

    error = raises_quota(media_register, actor=teacher, name="big", source=iso)

    assert error.message.startswith("Your own quota allows 1 GiB of disk; you use 0 GiB")
    assert "this needs 1.0 GiB more" in error.message
    assert not Media.objects.exists()


def test_media_count_limit(teacher: User, pools: Any, tmp_path: Path, settings: Any) -> None:
    settings.ISARD_MEDIA_IMPORT_DIRS = [tmp_path]
    Quota.objects.create(role=Role.TEACHER, max_media=1)
    Media.objects.create(name="old", owner=teacher, path="/nonexistent/old.iso")
    Media.objects.create(  # a failed copy does not count
        name="failed", owner=teacher, path="/nonexistent/f.iso", status=MediaStatus.FAILED
    )
    iso = tmp_path / "small.iso"
    iso.write_bytes(b"iso")

    error = raises_quota(media_register, actor=teacher, name="new", source=iso)

    assert error.message == "The default for teachers allows 1 media per teacher; you have 1."


def test_template_limit_refuses_template_from_desktop_and_leaves_the_desktop_stopped(
    teacher: User, school: School, hardware: HardwareProfile
) -> None:
    Quota.objects.create(school=school, max_templates=0)
    desktop = make_desktop(teacher, hardware)

    error = raises_quota(template_from_desktop, actor=teacher, desktop_id=desktop.pk, name="T")

    assert error.message == "Your school “North” allows 0 templates per person; you have 0."
    desktop.refresh_from_db()
    assert desktop.status == DesktopStatus.STOPPED


# --- a class at once --------------------------------------------------------------------------


def test_a_class_gets_no_desktop_if_one_student_would_go_over(
    teacher: User, student: User, course: Course, school: School, base_template: Any
) -> None:
    other = UserFactory.create(username="bob", school=school)
    MembershipFactory.create(course=course, user=other)
    Quota.objects.create(course=course, role=Role.STUDENT, max_desktops=1)
    make_desktop(student, base_template.hardware, course=course)

    error = raises_quota(
        desktops_create_bulk,
        actor=teacher,
        template=base_template,
        owners=[student, other],
        name="Lab",
        course=course,
    )

    assert error.message == (
        "Nothing was created: 1 of 2 people would go over a quota. alice: The course “1A” "
        "allows 1 desktop per student; alice has 1."
    )
    assert error.extra["users"] == ["alice"]
    assert not Desktop.objects.filter(name="Lab").exists()


def test_a_teacher_is_told_whose_quota_it_is(
    teacher: User, student: User, course: Course, hardware: HardwareProfile
) -> None:
    Quota.objects.create(course=course, max_running=1)
    make_desktop(student, hardware, DesktopStatus.STARTED, course)
    stopped = make_desktop(student, hardware, course=course)

    error = raises_quota(desktop_start, actor=teacher, desktop=stopped)

    assert error.message == (
        "The course “1A” allows 1 running desktop per student; alice has 1 running."
    )


# --- precedence -------------------------------------------------------------------------------


def allowed(user: User, kind: str, course: Course | None = None) -> tuple[int, str] | None:
    for limit in limits_for([user], course=course)[user.pk]:
        if limit.kind is KIND_BY_NAME[kind]:
            return limit.allowed, limit.scope
    return None


def test_most_specific_scope_wins(student: User, school: School, course: Course) -> None:
    assert allowed(student, "desktops") is None  # nothing set: unlimited
    Quota.objects.create(role=Role.STUDENT, max_desktops=1)
    assert allowed(student, "desktops") == (1, "role")
    Quota.objects.create(school=school, max_desktops=2)
    assert allowed(student, "desktops") == (2, "school")
    Quota.objects.create(school=school, role=Role.STUDENT, max_desktops=3)
    assert allowed(student, "desktops") == (3, "school")
    assert limits_for([student])[student.pk][0].quota.role == Role.STUDENT
    Quota.objects.create(course=course, max_desktops=4)
    assert allowed(student, "desktops") == (4, "course")
    Quota.objects.create(course=course, role=Role.STUDENT, max_desktops=5)
    assert allowed(student, "desktops") == (5, "course")
    Quota.objects.create(user=student, max_desktops=6)
    assert allowed(student, "desktops") == (6, "user")


def test_a_more_specific_scope_may_also_be_stricter(student: User, school: School) -> None:
    Quota.objects.create(role=Role.STUDENT, max_running=5)
    Quota.objects.create(user=student, max_running=0)

    assert allowed(student, "running") == (0, "user")


def test_each_limit_falls_through_on_its_own(student: User, school: School, course: Course) -> None:
    Quota.objects.create(user=student, max_running=4)
    Quota.objects.create(course=course, max_desktops=3, max_running=1)
    Quota.objects.create(role=Role.STUDENT, max_memory_mib=2048, max_desktops=1)

    assert allowed(student, "running") == (4, "user")
    assert allowed(student, "desktops") == (3, "course")
    assert allowed(student, "memory") == (2048, "role")
    assert allowed(student, "vcpus") is None


def test_a_course_rule_for_teachers_does_not_apply_to_students(
    student: User, teacher: User, course: Course
) -> None:
    Quota.objects.create(course=course, role=Role.TEACHER, max_desktops=10)
    Quota.objects.create(role=Role.STUDENT, max_desktops=2)

    assert allowed(student, "desktops") == (2, "role")
    assert allowed(teacher, "desktops") == (10, "course")


def test_the_desktops_course_decides_and_outside_a_course_the_most_generous_one(
    student: User, school: School, course: Course, hardware: HardwareProfile
) -> None:
    strict = course
    generous = CourseFactory.create(school=school, name="Robotics")
    MembershipFactory.create(course=generous, user=student)
    Quota.objects.create(course=strict, max_running=1)
    Quota.objects.create(course=generous, max_running=3)
    make_desktop(student, hardware, DesktopStatus.STARTED, strict)

    assert allowed(student, "running", strict) == (1, "course")
    assert allowed(student, "running", generous) == (3, "course")
    assert allowed(student, "running") == (3, "course")
    in_strict = make_desktop(student, hardware, course=strict)
    raises_quota(desktop_start, actor=student, desktop=in_strict)
    personal = make_desktop(student, hardware)
    desktop_start(actor=student, desktop=personal)
    assert personal.status == DesktopStatus.STARTING


def test_administrators_are_never_limited(hardware: HardwareProfile) -> None:
    admin = UserFactory.create(role=Role.ADMIN)
    Quota.objects.create(role=Role.ADMIN, max_running=0)
    stopped = make_desktop(admin, hardware)

    desktop_start(actor=admin, desktop=stopped)

    assert stopped.status == DesktopStatus.STARTING
    assert limits_for([admin])[admin.pk] == []


# --- the model --------------------------------------------------------------------------------


def test_a_quota_has_exactly_one_scope(student: User, course: Course) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        Quota.objects.create(user=student, course=course, max_desktops=1)
    with pytest.raises(IntegrityError), transaction.atomic():
        Quota.objects.create(max_desktops=1)  # no scope at all
    with pytest.raises(IntegrityError), transaction.atomic():
        Quota.objects.create(course=course, role=Role.MANAGER, max_desktops=1)
    Quota.objects.create(course=course, role=Role.STUDENT, max_desktops=1)
    with pytest.raises(IntegrityError), transaction.atomic():
        Quota.objects.create(course=course, role=Role.STUDENT, max_desktops=2)


def test_quota_validation_explains_a_wrong_scope(student: User) -> None:
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError, match="A person's own quota has no role"):
        Quota(user=student, role=Role.STUDENT).clean()
    with pytest.raises(ValidationError, match="Choose a person, a course, a school or a role"):
        Quota().clean()


# --- what admins see --------------------------------------------------------------------------


def test_usage_report_shows_each_limit_with_its_scope(
    student: User, course: Course, hardware: HardwareProfile
) -> None:
    Quota.objects.create(course=course, role=Role.STUDENT, max_running=2)
    Quota.objects.create(role=Role.STUDENT, max_desktops=5)
    make_desktop(student, hardware, DesktopStatus.STARTED)
    make_desktop(student, hardware)

    lines = {line.kind.name: line for line in quota_report([student])[student.pk]}

    assert (lines["running"].in_use, lines["running"].allowed) == (1, 2)
    assert lines["running"].set_by == "course 1A, students"
    assert (lines["desktops"].in_use_text, lines["desktops"].allowed_text) == ("2", "5")
    assert (lines["vcpus"].in_use, lines["vcpus"].allowed_text) == (2, "unlimited")
    assert lines["memory"].in_use_text == "1024 MiB"
