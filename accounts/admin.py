"""The admin of people, courses, quotas, codes and the directory, scoped by role.

See `accounts.admin_scope`: administrators see everything, a school manager their school,
a teacher the courses they teach (members read-only, enrolment codes through actions).
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from accounts import permissions
from accounts.admin_scope import (
    IsardAdminAuthenticationForm,
    ManagerAccess,
    RoleScopedMixin,
    ScopedModelAdmin,
    admin_login_limited,
    admin_site_has_permission,
    request_actor,
)
from accounts.choices import CourseRole, Role
from accounts.ldap.sync import ldap_sync
from accounts.ldap.syntax import format_role_groups, parse_role_groups
from accounts.models import (
    Course,
    CourseMembership,
    EnrolmentCode,
    LdapAccount,
    LdapGroupMapping,
    LdapSyncRun,
    Quota,
    School,
    SchoolDirectory,
    User,
)
from accounts.quotas import KINDS, UsageLine, quota_report
from accounts.services.enrolment import (
    enrolment_code_disable,
    enrolment_code_regenerate,
    format_code,
)
from accounts.services.passwords import user_password_reset
from isard.core.errors import ApplicationError

# Managers and teachers reach the admin without `is_staff` (the LDAP role groups make them).
admin.site.has_permission = admin_site_has_permission  # type: ignore[method-assign]
admin.site.login_form = IsardAdminAuthenticationForm
admin.site.login = admin_login_limited(admin.site.login)  # type: ignore[method-assign]


def _actor(request: HttpRequest) -> User:
    actor = request_actor(request)
    if actor is None:
        raise PermissionDenied
    return actor


@admin.register(User)
class UserAdmin(RoleScopedMixin, DjangoUserAdmin):
    manager_access: ClassVar[ManagerAccess] = "write"
    list_display = ("username", "first_name", "last_name", "role", "school", "is_active")
    list_filter = ("role", ("school", admin.RelatedOnlyFieldListFilter), "is_active")
    fieldsets = (
        *(DjangoUserAdmin.fieldsets or ()),
        ("isard", {"fields": ("role", "school", "must_change_password")}),
        ("Quota: usage against limits", {"fields": ("quota_usage",)}),
    )
    readonly_fields = ("quota_usage",)
    actions = ["reset_passwords"]

    def scope_queryset(self, actor: User, queryset: QuerySet[Any]) -> QuerySet[Any]:
        visible = permissions.users_visible_to(actor).values("pk")
        return queryset.filter(pk__in=visible).exclude(role=Role.ADMIN).exclude(is_superuser=True)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = tuple(super().get_readonly_fields(request, obj))
        actor = request_actor(request)
        if actor is not None and not actor.is_admin:
            fields += ("is_superuser", "is_staff", "groups", "user_permissions")
        return fields

    def formfield_for_choice_field(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        actor = request_actor(request)
        if db_field.name == "role" and actor is not None and not actor.is_admin:
            kwargs["choices"] = [(r.value, r.label) for r in Role if r != Role.ADMIN]
        return super().formfield_for_choice_field(db_field, request, **kwargs)

    def save_model(self, request: HttpRequest, obj: User, form: ModelForm, change: bool) -> None:
        actor = _actor(request)
        if not actor.is_admin and obj.school_id is None:
            obj.school_id = actor.school_id  # a manager's new people are in their school
        if not permissions.can_assign_role(
            actor, role=obj.role, school_id=obj.school_id, superuser=obj.is_superuser
        ):
            raise PermissionDenied("A manager keeps people in their school and below admin.")
        super().save_model(request, obj, form, change)

    @admin.display(description="usage")
    def quota_usage(self, user: User) -> SafeString:
        if user.pk is None:
            return format_html("{}", "-")
        return usage_table(quota_report([user])[user.pk])

    @admin.action(description="Reset the password (shows a one-time temporary password)")
    def reset_passwords(self, request: HttpRequest, queryset: QuerySet[User]) -> Any:
        actor = _actor(request)
        done: list[tuple[str, str]] = []
        for user in queryset.order_by("username"):
            try:
                done.append((user.get_username(), user_password_reset(actor=actor, user=user)))
            except ApplicationError as error:
                self.message_user(request, error.message, messages.ERROR)
        if not done:
            return None
        # Shown on this response only: never stored, never put in a message cookie.
        return TemplateResponse(
            request,
            "admin/accounts/temporary_passwords.html",
            {
                **self.admin_site.each_context(request),
                "title": "Temporary passwords",
                "passwords": done,
                "opts": self.model._meta,
            },
        )


def usage_table(lines: list[UsageLine]) -> SafeString:
    """A person's usage against each limit, and which quota sets it."""
    rows = format_html_join(
        "",
        "<tr><th scope='row'>{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        (
            (
                line.kind.label,
                line.in_use_text,
                line.allowed_text,
                "over the limit" if line.over else ("at the limit" if line.full else ""),
                line.set_by,
            )
            for line in lines
        ),
    )
    return format_html(
        "<table><thead><tr><th scope='col'>limit</th><th scope='col'>in use</th>"
        "<th scope='col'>allowed</th><th scope='col'></th><th scope='col'>set by</th>"
        "</tr></thead><tbody>{}</tbody></table>",
        rows,
    )


@admin.register(School)
class SchoolAdmin(ScopedModelAdmin):
    manager_access: ClassVar[ManagerAccess] = "read"
    list_display = ("name", "slug", "local_accounts", "own_directory")
    prepopulated_fields = {"slug": ("name",)}

    def scope_queryset(self, actor: User, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(pk=actor.school_id)

    @admin.display(description="own directory", boolean=True)
    def own_directory(self, school: School) -> bool:
        return SchoolDirectory.objects.filter(school=school, enabled=True).exists()


class MembershipInline(RoleScopedMixin, admin.TabularInline):
    """Managers enrol people by hand; teachers see their classes (students join by code)."""

    manager_access: ClassVar[ManagerAccess] = "write"
    teacher_access: ClassVar[ManagerAccess] = "read"
    model = CourseMembership
    extra = 1
    autocomplete_fields = ("user",)
    # Rows added here are "manual"; the group sync removes only those it gave itself.
    fields = ("user", "role", "source")
    readonly_fields = ("source",)

    def scope_queryset(self, actor: User, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(course__in=permissions.courses_taught_by(actor))


class EnrolmentCodeInline(RoleScopedMixin, admin.TabularInline):
    """The course's codes, read-only: the actions of the course list change them."""

    manager_access: ClassVar[ManagerAccess] = "read"
    teacher_access: ClassVar[ManagerAccess] = "read"
    model = EnrolmentCode
    extra = 0
    fields = ("role", "shown_code", "enabled", "updated_at", "updated_by")
    readonly_fields = fields

    def scope_queryset(self, actor: User, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(course__in=permissions.courses_taught_by(actor))

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="code")
    def shown_code(self, code: EnrolmentCode) -> str:
        return format_code(code.code)


@admin.register(Course)
class CourseAdmin(ScopedModelAdmin):
    """Managers run their school's courses; a teacher sees the courses they teach, with
    their members (read-only) and codes, which the actions regenerate or disable."""

    manager_access: ClassVar[ManagerAccess] = "write"
    teacher_access: ClassVar[ManagerAccess] = "act"
    list_display = ("name", "school", "student_count", "student_code")
    list_filter = (("school", admin.RelatedOnlyFieldListFilter),)
    search_fields = ("name",)
    ordering = ("school__name", "name")  # the quota form's course search pages through them
    inlines = [MembershipInline, EnrolmentCodeInline]
    readonly_fields = ("members_usage",)
    actions = ["new_student_codes", "new_teacher_codes", "disable_codes"]

    def scope_queryset(self, actor: User, queryset: QuerySet[Any]) -> QuerySet[Any]:
        # Taught, not merely visible: a teacher enrolled as a student somewhere does not
        # manage that course (for a manager both are their school's courses).
        return queryset.filter(pk__in=permissions.courses_taught_by(actor).values("pk"))

    @admin.display(description="students")
    def student_count(self, course: Course) -> int:
        return course.memberships.filter(role=CourseRole.STUDENT).count()

    @admin.display(description="student code")
    def student_code(self, course: Course) -> str:
        code = EnrolmentCode.objects.filter(course=course, role=CourseRole.STUDENT).first()
        if code is None:
            return "-"
        return format_code(code.code) if code.enabled else f"{format_code(code.code)} (disabled)"

    def save_model(self, request: HttpRequest, obj: Course, form: ModelForm, change: bool) -> None:
        if not permissions.manages_school(_actor(request), obj.school_id):
            raise PermissionDenied("A manager keeps courses in their school.")
        super().save_model(request, obj, form, change)

    def _codes(self, request: HttpRequest, courses: QuerySet[Course], role: CourseRole) -> None:
        for course in courses:
            try:
                code = enrolment_code_regenerate(actor=_actor(request), course=course, role=role)
            except ApplicationError as error:
                self.message_user(request, f"{course}: {error.message}", messages.ERROR)
                continue
            self.message_user(
                request, f"New {role.label.lower()} code for “{course}”: {format_code(code.code)}."
            )

    @admin.action(description="New student code (the old one stops working)")
    def new_student_codes(self, request: HttpRequest, queryset: QuerySet[Course]) -> None:
        self._codes(request, queryset, CourseRole.STUDENT)

    @admin.action(description="New teacher code (the old one stops working)")
    def new_teacher_codes(self, request: HttpRequest, queryset: QuerySet[Course]) -> None:
        self._codes(request, queryset, CourseRole.TEACHER)

    @admin.action(description="Disable the student and teacher codes")
    def disable_codes(self, request: HttpRequest, queryset: QuerySet[Course]) -> None:
        for course in queryset:
            try:
                for role in CourseRole:
                    enrolment_code_disable(actor=_actor(request), course=course, role=role)
            except ApplicationError as error:
                self.message_user(request, f"{course}: {error.message}", messages.ERROR)
                continue
            self.message_user(request, f"The codes of “{course}” are disabled.")

    @admin.display(description="members' usage against their limits in this course")
    def members_usage(self, course: Course) -> SafeString:
        if course.pk is None:
            return format_html("{}", "-")
        members = list(course.members.order_by("username"))
        report = quota_report(members, course=course)
        rows = format_html_join(
            "",
            "<tr><th scope='row'>{}</th>{}</tr>",
            (
                (
                    member.get_username(),
                    format_html_join(
                        "",
                        "<td>{} / {}</td>",
                        ((line.in_use_text, line.allowed_text) for line in report[member.pk]),
                    ),
                )
                for member in members
            ),
        )
        header = format_html_join("", "<th scope='col'>{}</th>", ((kind.label,) for kind in KINDS))
        return format_html(
            "<table><thead><tr><th scope='col'>person</th>{}</tr></thead><tbody>{}</tbody></table>",
            header,
            rows,
        )


@admin.register(Quota)
class QuotaAdmin(ScopedModelAdmin):
    """Managers set their school's, its courses' and its people's quotas; the defaults per
    role are the administrators'."""

    manager_access: ClassVar[ManagerAccess] = "write"
    list_display = (
        "__str__",
        "max_desktops",
        "max_running",
        "max_vcpus",
        "max_memory_mib",
        "max_disk_gib",
        "max_templates",
        "max_media",
    )
    list_filter = ("role", ("school", admin.RelatedOnlyFieldListFilter))
    autocomplete_fields = ("user", "course")
    fieldsets = (
        (
            "Scope (one of: a person; a course, optionally one role in it; a school, "
            "optionally one role; a role alone, the default)",
            {"fields": ("user", "course", "school", "role")},
        ),
        (
            "Limits per person (empty: not set here, a wider scope decides; 0: none allowed)",
            {
                "fields": (
                    "max_desktops",
                    "max_running",
                    "max_vcpus",
                    "max_memory_mib",
                    "max_disk_gib",
                    "max_templates",
                    "max_media",
                )
            },
        ),
    )

    def scope_queryset(self, actor: User, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(pk__in=permissions.quotas_managed_by(actor).values("pk"))

    def save_model(self, request: HttpRequest, obj: Quota, form: ModelForm, change: bool) -> None:
        if not permissions.can_manage_quota(_actor(request), obj):
            raise PermissionDenied("A manager sets quotas inside their school only.")
        super().save_model(request, obj, form, change)


# The directory is configured for the whole platform: administrators only.


@admin.register(LdapGroupMapping)
class LdapGroupMappingAdmin(ScopedModelAdmin):
    list_display = ("group_dn", "school", "course", "course_name", "role", "teachers", "enabled")
    list_filter = ("school", "role", "enabled")
    search_fields = ("group_dn", "course_name", "course__name", "teachers_group_dn")
    autocomplete_fields = ("course",)
    actions = ["run_ldap_sync"]
    fieldsets = (
        (None, {"fields": ("group_dn", "school", "course_name", "course", "role", "enabled")}),
        (
            "The course's teachers, if the directory says who they are elsewhere (any of "
            "these, together; on the students' mapping)",
            {
                "fields": (
                    "teachers_group_dn",
                    "teachers_group_pattern",
                    "teachers_attribute",
                    "teachers_attribute_value",
                )
            },
        ),
    )

    @admin.display(description="teachers from")
    def teachers(self, mapping: LdapGroupMapping) -> str:
        sources = [
            label
            for label, value in (
                ("group", mapping.teachers_group_dn),
                (f"rule {mapping.teachers_group_pattern}", mapping.teachers_group_pattern),
                (f"attribute {mapping.teachers_attribute}", mapping.teachers_attribute),
            )
            if value
        ]
        return ", ".join(sources) or "-"

    @admin.action(description="Run the LDAP group sync now (all enabled mappings)")
    def run_ldap_sync(self, request: HttpRequest, queryset: QuerySet[LdapGroupMapping]) -> None:
        actor = request.user if isinstance(request.user, User) else None
        try:
            report = ldap_sync(actor=actor)
        except ApplicationError as error:
            self.message_user(request, error.message, level=messages.ERROR)
            return
        level = messages.WARNING if report.skipped or report.warnings else messages.SUCCESS
        self.message_user(request, str(report).splitlines()[0], level=level)


class RoleGroupsField(forms.CharField):
    """The role groups written as `ISARD_LDAP_ROLE_GROUPS` is: `role=group DN` per line
    (or separated by `;`); kept as a role -> DN mapping."""

    widget = forms.Textarea(attrs={"rows": 3, "cols": 80})

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, dict):
            return format_role_groups(value)
        if isinstance(value, str) and value.strip().startswith("{"):
            # The stored JSON, as the model field renders it: shown in the one format.
            try:
                loaded = json.loads(value)
            except ValueError:
                return value
            if isinstance(loaded, dict):
                return format_role_groups(loaded)
        return value

    def to_python(self, value: Any) -> dict[str, str]:  # type: ignore[override]
        if isinstance(value, dict):
            return value
        try:
            return parse_role_groups(str(value or ""))
        except ValueError as error:
            raise forms.ValidationError(f"Role groups: {error}", code="role_groups") from error


class SchoolDirectoryForm(forms.ModelForm):
    """The bind password is never shown again; left empty, it stays as it was. The role
    groups are written as in `ISARD_LDAP_ROLE_GROUPS`."""

    bind_password = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Left empty when editing: unchanged.",
    )
    role_groups = RoleGroupsField(
        required=False,
        help_text=SchoolDirectory._meta.get_field("role_groups").help_text,
    )

    class Meta:
        model = SchoolDirectory
        fields = [
            "school",
            "enabled",
            "server_uri",
            "bind_dn",
            "bind_password",
            "user_search_base",
            "user_filter",
            "username_attribute",
            "first_name_attribute",
            "last_name_attribute",
            "email_attribute",
            "group_search_base",
            "group_type",
            "start_tls",
            "ca_cert_file",
            "role_groups",
            "timeout_seconds",
        ]

    def clean_bind_password(self) -> str:
        value = str(self.cleaned_data.get("bind_password") or "")
        if not value and self.instance.pk is not None:
            return self.instance.bind_password
        return value


@admin.register(SchoolDirectory)
class SchoolDirectoryAdmin(ScopedModelAdmin):
    """A school's own LDAP directory (administrators only: it holds a service password)."""

    form = SchoolDirectoryForm
    list_display = ("school", "server_uri", "enabled", "start_tls")
    list_filter = ("enabled",)


@admin.register(LdapAccount)
class LdapAccountAdmin(ScopedModelAdmin):
    list_display = ("user", "dn", "directory", "managed_by_sync", "disabled_by_sync")
    list_filter = ("managed_by_sync", "disabled_by_sync", "directory")
    search_fields = ("user__username", "dn")
    readonly_fields = ("user", "dn", "directory")


@admin.register(LdapSyncRun)
class LdapSyncRunAdmin(ScopedModelAdmin):
    list_display = ("started_at", "actor", "changes", "skipped")
    readonly_fields = ("started_at", "finished_at", "actor", "changes", "skipped", "summary")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
