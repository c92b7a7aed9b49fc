"""Roles of people in isard."""

from __future__ import annotations

from django.db import models


class Role(models.TextChoices):
    ADMIN = "admin", "Administrator"
    MANAGER = "manager", "School manager"
    TEACHER = "teacher", "Teacher"
    STUDENT = "student", "Student"


class CourseRole(models.TextChoices):
    TEACHER = "teacher", "Teacher"
    STUDENT = "student", "Student"


class MembershipSource(models.TextChoices):
    """Who put someone in a course. The group sync removes only what the directory gave."""

    DIRECTORY = "directory", "Directory (group sync)"
    CODE = "code", "Enrolment code"
    MANUAL = "manual", "By hand"
