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


class LdapGroupMapping(models.Model):
    """An LDAP group whose members the group sync puts in a course, with a course role.

    The course is `course` once chosen or linked; until then the sync finds it by
    `course_name` in `school`, creating it if missing, and links it, so renaming the course
    later keeps the mapping. Several groups may feed one course; someone in both a teacher
    and a student group of the same course is its teacher.
    """

    group_dn = models.CharField(
        "group DN",
        max_length=512,
        help_text="A groupOfNames or posixGroup, e.g. cn=math-1a,ou=groups,dc=school,dc=example.",
    )
    school = models.ForeignKey(School, on_delete=models.PROTECT, related_name="ldap_group_mappings")
    course_name = models.CharField(
        max_length=200,
        blank=True,
        help_text="Finds (or creates) the course in the school while no course is linked.",
    )
    course = models.ForeignKey(
        Course,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="ldap_group_mappings",
        help_text="Linked by the sync; choose one to feed an existing course.",
    )
    role = models.CharField(max_length=16, choices=CourseRole.choices, default=CourseRole.STUDENT)
    enabled = models.BooleanField(default=True)

    class Meta:
        verbose_name = "LDAP group mapping"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(course__isnull=False) | ~models.Q(course_name=""),
                name="ldapgroupmapping_course_or_name",
            ),
        ]

    def __str__(self) -> str:
        course = self.course.name if self.course else self.course_name
        return f"{self.group_dn} → {course} ({self.role})"

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        if self.course is None and not self.course_name:
            raise ValidationError("Choose a course or give the name of one to create.")
        if self.course is not None and self.course.school_id != self.school_id:
            raise ValidationError({"course": "The course belongs to another school."})


class LdapAccount(models.Model):
    """Links a person to their directory entry.

    Only people with one are changed by the group sync: local accounts never are. The sync
    disables (never deletes) a person who left every synced group, and enables them again
    when they come back, unless an administrator disabled them.
    """

    user = models.OneToOneField(User, on_delete=models.CASCADE, related_name="ldap_account")
    dn = models.CharField("DN", max_length=1024)
    managed_by_sync = models.BooleanField(
        default=False,
        help_text="The group sync has seen this person in a synced group; leaving all of "
        "them disables the account.",
    )
    disabled_by_sync = models.BooleanField(
        default=False,
        help_text="Disabled because they left every synced group; enabled again on return.",
    )

    class Meta:
        verbose_name = "LDAP account"

    def __str__(self) -> str:
        return self.dn


class LdapSyncRun(models.Model):
    """One run of the LDAP group sync: who started it, when, and what it changed."""

    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()
    actor = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    changes = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0)
    summary = models.TextField()

    class Meta:
        verbose_name = "LDAP sync run"
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"LDAP sync at {self.started_at:%Y-%m-%d %H:%M} ({self.changes} changes)"


class ApiToken(models.Model):
    """A person's key for API clients (a phone app, a script), sent as `Bearer <key>`.

    Only a SHA-256 of the key is stored, so a copy of the database signs nobody in; the
    key itself is shown once, when it is made. `prefix` (its first characters) lets the
    owner tell their tokens apart when listing or revoking them.
    """

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True)
    key_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=16)
    created_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        verbose_name = "API token"
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"
