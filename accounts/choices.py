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
