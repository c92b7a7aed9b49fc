"""Schools, people and courses."""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from django.db import models

from accounts.choices import CourseRole, Role


class School(models.Model):
    """A tenant: its own people, courses and authentication settings."""

    name = models.CharField(max_length=200, unique=True)
    slug = models.SlugField(max_length=100, unique=True)

    def __str__(self) -> str:
        return self.name


class User(AbstractUser):
    """A person. `role` is the highest thing they may do; courses refine it per class."""

    role = models.CharField(max_length=16, choices=Role.choices, default=Role.STUDENT)
    school = models.ForeignKey(
        School, null=True, blank=True, on_delete=models.PROTECT, related_name="users"
    )

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN or self.is_superuser

    @property
    def is_teacher(self) -> bool:
        return self.role in (Role.TEACHER, Role.MANAGER, Role.ADMIN) or self.is_superuser


class Course(models.Model):
    """A class of students with their teachers; templates are shared with courses."""

    school = models.ForeignKey(School, on_delete=models.PROTECT, related_name="courses")
    name = models.CharField(max_length=200)
    members: models.ManyToManyField[User, CourseMembership] = models.ManyToManyField(
        User, through="CourseMembership", related_name="courses"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["school", "name"], name="course_unique_name_per_school")
        ]

    def __str__(self) -> str:
        return self.name


class CourseMembership(models.Model):
    course = models.ForeignKey(Course, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=CourseRole.choices, default=CourseRole.STUDENT)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["course", "user"], name="membership_unique_user_course")
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.course} ({self.role})"
