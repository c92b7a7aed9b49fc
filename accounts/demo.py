"""Demo people: one admin, one teacher, three students and a course that holds them."""

from __future__ import annotations

from dataclasses import dataclass

from accounts.choices import CourseRole, Role
from accounts.models import Course, CourseMembership, School, User

DEMO_SCHOOL = "Demo School"
DEMO_COURSE = "Demo course"


@dataclass(frozen=True)
class DemoLogin:
    username: str
    password: str
    role: str


DEMO_LOGINS = (
    DemoLogin("admin", "admin-demo", Role.ADMIN),
    DemoLogin("teacher", "teacher-demo", Role.TEACHER),
    DemoLogin("student1", "student-demo", Role.STUDENT),
    DemoLogin("student2", "student-demo", Role.STUDENT),
    DemoLogin("student3", "student-demo", Role.STUDENT),
)


def demo_people_ensure() -> list[DemoLogin]:
    """Create the demo accounts once; a second run changes nothing (passwords included)."""
    school, _ = School.objects.get_or_create(slug="demo", defaults={"name": DEMO_SCHOOL})
    course, _ = Course.objects.get_or_create(school=school, name=DEMO_COURSE)
    for login in DEMO_LOGINS:
        user = User.objects.filter(username=login.username).first()
        if user is None:
            user = User(
                username=login.username,
                role=login.role,
                school=school,
                is_staff=login.role in (Role.ADMIN, Role.TEACHER),
                is_superuser=login.role == Role.ADMIN,
            )
            user.set_password(login.password)
            user.save()
        if login.role in (Role.TEACHER, Role.STUDENT):
            CourseMembership.objects.get_or_create(
                course=course,
                user=user,
                defaults={
                    "role": CourseRole.TEACHER if login.role == Role.TEACHER else CourseRole.STUDENT
                },
            )
    return list(DEMO_LOGINS)
