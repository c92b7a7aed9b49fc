"""Schools, people and courses."""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from accounts.choices import CourseRole, MembershipSource, Role
from accounts.ldap.syntax import (
    validate_attribute_name,
    validate_dn,
    validate_group_name_pattern,
)
from isard.core.text import validate_name


class School(models.Model):
    """A tenant: its own people, courses and authentication settings.

    How its people sign in: with a password kept by isard (`local_accounts`), with the
    school's own LDAP directory (`SchoolDirectory`), with the platform's directory
    (`ISARD_LDAP_*`), or several of these.
    """

    name = models.CharField(validators=[validate_name], max_length=200, unique=True)
    slug = models.SlugField(max_length=100, unique=True)
    local_accounts = models.BooleanField(
        "local accounts",
        default=True,
        help_text="People of this school may have a password kept by isard (sign up with a "
        "course code, password resets). Off: only a directory signs them in; "
        "administrators always may.",
    )

    def __str__(self) -> str:
        return self.name


class User(AbstractUser):
    """A person. `role` is the highest thing they may do; courses refine it per class."""

    role = models.CharField(max_length=16, choices=Role.choices, default=Role.STUDENT)
    school = models.ForeignKey(
        School, null=True, blank=True, on_delete=models.PROTECT, related_name="users"
    )
    must_change_password = models.BooleanField(
        default=False,
        help_text="Set by a password reset: the person chooses a new password at sign-in.",
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
    name = models.CharField(validators=[validate_name], max_length=200)
    members: models.ManyToManyField[User, CourseMembership] = models.ManyToManyField(
        User, through="CourseMembership", related_name="courses"
    )
    students_may_reset = models.BooleanField(
        default=False,
        help_text="Students may put their own desktops of this course back to the template "
        "(the earlier disk waits in the recycle bin).",
    )
    session_limit_minutes = models.PositiveIntegerField(
        default=0,
        validators=[MaxValueValidator(24 * 60)],
        help_text="A desktop of the course shuts down this long after it started (0: never).",
    )
    session_warning_minutes = models.PositiveIntegerField(
        default=5,
        validators=[MaxValueValidator(120)],
        help_text="How long before the end the student is warned.",
    )
    session_extensions = models.PositiveSmallIntegerField(
        default=1,
        validators=[MaxValueValidator(20)],
        help_text="How many times a student may extend a session.",
    )
    idle_shutdown_minutes = models.PositiveIntegerField(
        default=0,
        validators=[MaxValueValidator(24 * 60)],
        help_text="A running desktop nobody has had on screen for this long is shut down "
        "(0: never).",
    )
    session_extension_minutes = models.PositiveIntegerField(
        default=30,
        validators=[MinValueValidator(1), MaxValueValidator(24 * 60)],
        help_text="How much longer each extension gives.",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["school", "name"], name="course_unique_name_per_school")
        ]

    def __str__(self) -> str:
        return self.name


class CourseMembership(models.Model):
    """Someone in a course, with a course role and where the membership came from.

    `source` is what lets the group sync remove only the memberships it made: one given
    by hand or by a code stays when the directory does not (or no longer) list the person.
    """

    course = models.ForeignKey(Course, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=CourseRole.choices, default=CourseRole.STUDENT)
    source = models.CharField(
        max_length=16, choices=MembershipSource.choices, default=MembershipSource.MANUAL
    )

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

    A directory rarely says who teaches which class the way it lists the class, so a
    students' mapping may also say where the course's teachers are, in any of three ways
    (together, their union): a teachers' group of its own (`teachers_group_dn`), a
    naming rule that finds that group by the course group's name
    (`teachers_group_pattern`, `teachers-{course}`), or an attribute of the teachers'
    own entries that lists the classes they teach (`teachers_attribute`, matched against
    `teachers_attribute_value` or else the course group's name).
    """

    group_dn = models.CharField(
        "group DN",
        max_length=512,
        validators=[validate_dn],
        help_text=(
            "A groupOfNames, groupOfUniqueNames, posixGroup or Active Directory group, "
            "e.g. cn=math-1a,ou=groups,dc=school,dc=example."
        ),
    )
    school = models.ForeignKey(School, on_delete=models.PROTECT, related_name="ldap_group_mappings")
    course_name = models.CharField(
        validators=[validate_name],
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
    teachers_group_dn = models.CharField(
        "teachers' group DN",
        max_length=512,
        blank=True,
        validators=[validate_dn],
        help_text="The group of this course's teachers, e.g. "
        "cn=teachers-1a,ou=groups,dc=school,dc=example.",
    )
    teachers_group_pattern = models.CharField(
        "teachers' group naming rule",
        max_length=200,
        blank=True,
        validators=[validate_group_name_pattern],
        help_text="The teachers' group's name (cn), with {course} for the name of this "
        "mapping's group: teachers-{course} finds cn=teachers-1a for cn=1a. Looked for "
        "under the group search base (or beside the course's group).",
    )
    teachers_attribute = models.CharField(
        "teachers' attribute",
        max_length=100,
        blank=True,
        validators=[validate_attribute_name],
        help_text="An attribute of people's entries that lists the classes they teach "
        "(departmentNumber, or a schoolClass of your schema). With role groups, only "
        "people whose role is teacher or above count.",
    )
    teachers_attribute_value = models.CharField(
        "value that names this course",
        max_length=200,
        blank=True,
        validators=[validate_name],
        help_text="What the teachers' attribute holds for this course (case does not "
        "matter); empty: the name of this mapping's group (1a for cn=1a,...).",
    )
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
        if self.course is None and not self.course_name:
            raise ValidationError("Choose a course or give the name of one to create.")
        if self.course is not None and self.course.school_id != self.school_id:
            raise ValidationError({"course": "The course belongs to another school."})
        teacher_fields = ["teachers_group_dn", "teachers_group_pattern", "teachers_attribute"]
        if self.role == CourseRole.TEACHER and any(getattr(self, f) for f in teacher_fields):
            raise ValidationError(
                "This mapping's members are the course's teachers already: say where the "
                "teachers are on the mapping of the course's students."
            )
        if self.teachers_attribute_value and not self.teachers_attribute:
            raise ValidationError(
                {"teachers_attribute_value": "Give the teachers' attribute this value is in."}
            )

    @property
    def finds_teachers(self) -> bool:
        """Whether this mapping also says where its course's teachers are."""
        return bool(
            self.teachers_group_dn or self.teachers_group_pattern or self.teachers_attribute
        )


class SchoolDirectory(models.Model):
    """A school's own LDAP directory: its people sign in with it, and the group sync reads
    the school's mapped groups from it.

    The same settings as the platform's `ISARD_LDAP_*` (see `.env.example`), for one
    school. Usernames are one namespace for the whole platform: a name already taken by a
    person of another directory or school is refused and reported, never merged.
    """

    school = models.OneToOneField(School, on_delete=models.CASCADE, related_name="directory")
    enabled = models.BooleanField(default=True)
    server_uri = models.CharField(
        "server URI", max_length=500, help_text="ldap://host, ldaps://host:636."
    )
    bind_dn = models.CharField(
        "bind DN", max_length=500, blank=True, help_text="The service account (empty: anonymous)."
    )
    bind_password = models.CharField(max_length=500, blank=True)
    user_search_base = models.CharField(max_length=500)
    user_filter = models.CharField(
        max_length=500, default="(uid=%(user)s)", help_text="`%(user)s` is the login name."
    )
    username_attribute = models.CharField(
        max_length=100, default="uid", validators=[validate_attribute_name]
    )
    first_name_attribute = models.CharField(
        max_length=100,
        default="givenName",
        blank=True,
        validators=[validate_attribute_name],
        help_text="Copied to the first name at each sign-in and sync (empty: not copied). "
        "A directory with one display name: put displayName here, and clear the last name's.",
    )
    last_name_attribute = models.CharField(
        max_length=100, default="sn", blank=True, validators=[validate_attribute_name]
    )
    email_attribute = models.CharField(
        "e-mail attribute",
        max_length=100,
        default="mail",
        blank=True,
        validators=[validate_attribute_name],
    )
    group_search_base = models.CharField(max_length=500, blank=True)
    group_type = models.CharField(
        max_length=24,
        choices=[
            ("groupOfNames", "groupOfNames"),
            ("groupOfUniqueNames", "groupOfUniqueNames"),
            ("posixGroup", "posixGroup"),
            ("group", "group (Active Directory)"),
        ],
        default="groupOfNames",
    )
    start_tls = models.BooleanField("StartTLS", default=False)
    ca_cert_file = models.CharField(
        "CA certificate file",
        max_length=500,
        blank=True,
        help_text="The CA that signed the directory's certificate (StartTLS, ldaps://).",
    )
    role_groups = models.JSONField(
        default=dict,
        blank=True,
        help_text="role=group DN, one per line or separated by “;”, as in "
        "ISARD_LDAP_ROLE_GROUPS, e.g. teacher=cn=teachers,ou=groups,dc=school,dc=example; the "
        "highest role among a person's groups wins; in none of them: student. A school's "
        "directory cannot make administrators.",
    )
    timeout_seconds = models.FloatField(default=5.0)

    class Meta:
        verbose_name = "school directory (LDAP)"
        verbose_name_plural = "school directories (LDAP)"

    def __str__(self) -> str:
        return f"{self.school}: {self.server_uri}"

    def clean(self) -> None:
        if "%(user)s" not in self.user_filter:
            raise ValidationError({"user_filter": "The filter needs %(user)s."})
        allowed = [role for role in Role.values if role != Role.ADMIN]
        if not isinstance(self.role_groups, dict) or not all(
            isinstance(role, str) and isinstance(dn, str) for role, dn in self.role_groups.items()
        ):
            raise ValidationError({"role_groups": "A mapping of roles to group DNs."})
        if unknown := sorted(set(self.role_groups) - set(allowed)):
            raise ValidationError(
                {
                    "role_groups": f"{', '.join(unknown)}: not a role a school's directory may "
                    f"give; the roles are {', '.join(allowed)}."
                }
            )


class LdapAccount(models.Model):
    """Links a person to their directory entry.

    Only people with one are changed by the group sync: local accounts never are. The sync
    disables (never deletes) a person who left the directory, or who left every synced
    group after it had seen them in one, and enables them again when they come back,
    unless an administrator disabled them.
    """

    user = models.OneToOneField(User, on_delete=models.CASCADE, related_name="ldap_account")
    dn = models.CharField("DN", max_length=1024)
    directory = models.ForeignKey(
        SchoolDirectory,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="accounts",
        help_text="The school directory this person signs in with; empty: the platform's.",
    )
    managed_by_sync = models.BooleanField(
        default=False,
        help_text="The group sync has seen this person in a synced group; leaving all of "
        "them disables the account.",
    )
    disabled_by_sync = models.BooleanField(
        default=False,
        help_text="Disabled because they left the directory or every synced group; enabled "
        "again on return.",
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
    name = models.CharField(validators=[validate_name], max_length=100, blank=True)
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


class Quota(models.Model):
    """Limits for a scope of people; each limit left empty falls through to a wider scope.

    A quota row has one scope, from the most specific to the least:

    1. a person (`user`);
    2. a course (`course`), optionally for one course role (`role` student or teacher);
    3. a school and a role (`school` + `role`);
    4. a whole school (`school`, no role);
    5. a role everywhere (`role` alone): the default for students, teachers, managers.

    For each limit separately, the most specific scope that sets it wins, so a course can
    raise the running-desktop limit and leave memory to the school's default. Every limit
    is per person (each student of the course may run 2 desktops), never pooled. Empty
    means "not set here"; 0 means "none allowed". With no quota at all a person is
    unlimited, and administrators are never limited. `accounts.quotas` applies them.
    """

    user = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.CASCADE, related_name="quotas"
    )
    course = models.ForeignKey(
        Course, null=True, blank=True, on_delete=models.CASCADE, related_name="quotas"
    )
    school = models.ForeignKey(
        School, null=True, blank=True, on_delete=models.CASCADE, related_name="quotas"
    )
    role = models.CharField(
        max_length=16,
        choices=Role.choices,
        blank=True,
        help_text="With a course: its students or teachers (blank: every member). With a "
        "school: that role in the school. Alone: the default for the role everywhere.",
    )
    max_desktops = models.PositiveIntegerField(
        "desktops", null=True, blank=True, help_text="Desktops a person may own."
    )
    max_running = models.PositiveIntegerField(
        "running desktops", null=True, blank=True, help_text="Desktops running at once."
    )
    max_vcpus = models.PositiveIntegerField(
        "vCPUs", null=True, blank=True, help_text="vCPUs of the running desktops, together."
    )
    max_memory_mib = models.PositiveIntegerField(
        "memory (MiB)",
        null=True,
        blank=True,
        help_text="Memory of the running desktops, together.",
    )
    max_disk_gib = models.PositiveIntegerField(
        "disk (GiB)",
        null=True,
        blank=True,
        help_text="Disk space of the person's desktops, templates and media, together.",
    )
    max_templates = models.PositiveIntegerField("templates", null=True, blank=True)
    max_media = models.PositiveIntegerField("media", null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                name="quota_one_scope",
                condition=(
                    models.Q(user__isnull=False, course__isnull=True, school__isnull=True, role="")
                    | models.Q(
                        user__isnull=True,
                        course__isnull=False,
                        school__isnull=True,
                        role__in=["", CourseRole.STUDENT, CourseRole.TEACHER],
                    )
                    | models.Q(user__isnull=True, course__isnull=True, school__isnull=False)
                    | (
                        models.Q(user__isnull=True, course__isnull=True, school__isnull=True)
                        & ~models.Q(role="")
                    )
                ),
            ),
            models.UniqueConstraint(
                fields=["user"], condition=models.Q(user__isnull=False), name="quota_unique_user"
            ),
            models.UniqueConstraint(
                fields=["course", "role"],
                condition=models.Q(course__isnull=False),
                name="quota_unique_course_role",
            ),
            models.UniqueConstraint(
                fields=["school", "role"],
                condition=models.Q(school__isnull=False),
                name="quota_unique_school_role",
            ),
            models.UniqueConstraint(
                fields=["role"],
                condition=models.Q(user__isnull=True, course__isnull=True, school__isnull=True),
                name="quota_unique_role_default",
            ),
        ]

    def __str__(self) -> str:
        return f"Quota: {self.scope_label}"

    @property
    def scope_label(self) -> str:
        role = Role(self.role).label.lower() if self.role else ""
        if self.user_id is not None:
            return f"person {self.user}"
        if self.course_id is not None:
            return f"course {self.course}" + (f", {role}s" if role else "")
        if self.school_id is not None:
            return f"school {self.school}" + (f", {role}s" if role else "")
        return f"default for {role}s"

    def clean(self) -> None:
        scopes = [self.user_id, self.course_id, self.school_id]
        if sum(scope is not None for scope in scopes) > 1:
            raise ValidationError("Choose one scope: a person, a course or a school.")
        if self.user_id is not None and self.role:
            raise ValidationError({"role": "A person's own quota has no role."})
        if self.course_id is not None and self.role not in ("", *CourseRole.values):
            raise ValidationError({"role": "In a course, a role is student or teacher."})
        if not any(scopes) and not self.role:
            raise ValidationError("Choose a person, a course, a school or a role.")


class EnrolmentCode(models.Model):
    """The code that puts whoever types it in a course, with one role.

    Each course has at most one per role. Regenerating replaces the code (the old one stops
    working at once); disabling keeps it but refuses it.
    """

    course = models.ForeignKey(Course, on_delete=models.CASCADE, related_name="enrolment_codes")
    role = models.CharField(max_length=16, choices=CourseRole.choices)
    code = models.CharField(max_length=32, unique=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["course", "role"], name="enrolmentcode_one_per_role")
        ]

    def __str__(self) -> str:
        state = "" if self.enabled else " (disabled)"
        return f"{self.course} {self.get_role_display().lower()} code{state}"
