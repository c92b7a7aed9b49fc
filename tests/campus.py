"""Helpers for the API's tests: two schools with people of every role, clients, checks.

A pytest plugin (see the root conftest.py): its fixtures are there for every app's tests.
API test modules use `clean_throttles` (`pytestmark = pytest.mark.usefixtures(...)`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from django.conf import settings
from rest_framework.test import APIClient

from accounts.choices import CourseRole, Role
from accounts.models import Course, School, User
from accounts.tests.factories import CourseFactory, MembershipFactory, SchoolFactory, UserFactory
from accounts.tokens import api_token_create
from desktops.choices import DesktopStatus
from desktops.models import Desktop
from templates_app.choices import TemplateStatus
from templates_app.models import HardwareProfile, Template
from templates_app.tests.factories import HardwareProfileFactory


@pytest.fixture
def clean_throttles() -> Iterator[None]:
    """Rate-limit counters live in Redis and would leak from one test into the next."""

    def clear() -> None:
        client = redis.Redis.from_url(settings.REDIS_URL)
        keys = list(client.scan_iter(match="isard:*:throttle_*"))
        if keys:
            client.delete(*keys)
        client.close()

    clear()
    yield
    clear()


@dataclass
class Campus:
    """A school with two classes: each teacher teaches one, each student is in one."""

    school: School
    manager: User
    teacher: User
    other_teacher: User
    student: User
    other_student: User
    course: Course
    other_course: Course
    hardware: HardwareProfile
    student_desktop: Desktop
    other_student_desktop: Desktop
    teacher_template: Template
    other_teacher_template: Template


def make_campus(slug: str) -> Campus:
    school = SchoolFactory.create(slug=slug, name=slug)

    def person(role: Role, name: str) -> User:
        return UserFactory.create(username=f"{slug}-{name}", role=role, school=school)

    manager = person(Role.MANAGER, "manager")
    teacher = person(Role.TEACHER, "teacher")
    other_teacher = person(Role.TEACHER, "teacher2")
    student = person(Role.STUDENT, "student")
    other_student = person(Role.STUDENT, "student2")
    course = CourseFactory.create(school=school, name=f"{slug} 1A")
    other_course = CourseFactory.create(school=school, name=f"{slug} 1B")
    for member_course, member, role in [
        (course, teacher, CourseRole.TEACHER),
        (course, student, CourseRole.STUDENT),
        (other_course, other_teacher, CourseRole.TEACHER),
        (other_course, other_student, CourseRole.STUDENT),
    ]:
        MembershipFactory.create(course=member_course, user=member, role=role)
    hardware = HardwareProfileFactory.create()

    def desktop(owner: User, desktop_course: Course) -> Desktop:
        return Desktop.objects.create(
            name=f"{owner.username} desktop",
            owner=owner,
            course=desktop_course,
            hardware=hardware,
            status=DesktopStatus.STOPPED,
        )

    def template(owner: User, shared_with: Course) -> Template:
        made = Template.objects.create(
            name=f"{owner.username} template",
            owner=owner,
            hardware=hardware,
            status=TemplateStatus.READY,
        )
        made.shared_courses.add(shared_with)
        return made

    return Campus(
        school=school,
        manager=manager,
        teacher=teacher,
        other_teacher=other_teacher,
        student=student,
        other_student=other_student,
        course=course,
        other_course=other_course,
        hardware=hardware,
        student_desktop=desktop(student, course),
        other_student_desktop=desktop(other_student, other_course),
        teacher_template=template(teacher, course),
        other_teacher_template=template(other_teacher, other_course),
    )


@pytest.fixture
def fast_passwords(settings: Any) -> None:
    """Ten people per test: hash their passwords the cheap way (tests only)."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def north(db: None, fast_passwords: None) -> Campus:
    return make_campus("north")


@pytest.fixture
def south(db: None, fast_passwords: None) -> Campus:
    return make_campus("south")


@pytest.fixture
def admin(db: None) -> User:
    return UserFactory.create(username="root", role=Role.ADMIN, school=None)


def client_for(user: User | None, *, token: bool = True) -> APIClient:
    """A client signed in as `user`: with a real bearer token, or a browser session."""
    client = APIClient()
    if user is None:
        return client
    if token:
        _, key = api_token_create(user=user, name="test")
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    else:
        client.force_login(user)
    return client


def assert_error(response: Any, status_code: int) -> dict[str, Any]:
    """The one error shape, with the expected status code; returns the body."""
    assert response.status_code == status_code, (response.status_code, response.content[:500])
    body = response.json()
    assert set(body) == {"message", "extra"}, body
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["extra"], dict)
    return body


def ids(response: Any) -> set[int]:
    """The ids on a (paginated) list response."""
    assert response.status_code == 200, response.content[:500]
    return {item["id"] for item in response.json()["results"]}
