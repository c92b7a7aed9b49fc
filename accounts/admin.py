from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from accounts.models import (
    Course,
    CourseMembership,
    LdapAccount,
    LdapGroupMapping,
    LdapSyncRun,
    Quota,
    School,
    User,
)
from accounts.quotas import KINDS, UsageLine, quota_report
from accounts.services import ldap_sync
from isard.exceptions import ApplicationError


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    list_display = ("username", "first_name", "last_name", "role", "school", "is_active")
    list_filter = ("role", "school", "is_active")
    fieldsets = (
        *(DjangoUserAdmin.fieldsets or ()),
        ("isard", {"fields": ("role", "school", "must_change_password")}),
        ("Quota: usage against limits", {"fields": ("quota_usage",)}),
    )
    readonly_fields = ("quota_usage",)

    @admin.display(description="usage")
    def quota_usage(self, user: User) -> SafeString:
        if user.pk is None:
            return format_html("{}", "-")
        return usage_table(quota_report([user])[user.pk])


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
class SchoolAdmin(admin.ModelAdmin):
    list_display = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}


class MembershipInline(admin.TabularInline):
    model = CourseMembership
    extra = 1
    autocomplete_fields = ("user",)


@admin.register(Course)
class CourseAdmin(admin.ModelAdmin):
    list_display = ("name", "school")
    list_filter = ("school",)
    search_fields = ("name",)
    inlines = [MembershipInline]
    readonly_fields = ("members_usage",)

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
class QuotaAdmin(admin.ModelAdmin):
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
    list_filter = ("role", "school")
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


@admin.register(LdapGroupMapping)
class LdapGroupMappingAdmin(admin.ModelAdmin):
    list_display = ("group_dn", "school", "course", "course_name", "role", "enabled")
    list_filter = ("school", "role", "enabled")
    search_fields = ("group_dn", "course_name", "course__name")
    autocomplete_fields = ("course",)
    actions = ["run_ldap_sync"]

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


@admin.register(LdapAccount)
class LdapAccountAdmin(admin.ModelAdmin):
    list_display = ("user", "dn", "managed_by_sync", "disabled_by_sync")
    list_filter = ("managed_by_sync", "disabled_by_sync")
    search_fields = ("user__username", "dn")
    readonly_fields = ("user", "dn")


@admin.register(LdapSyncRun)
class LdapSyncRunAdmin(admin.ModelAdmin):
    list_display = ("started_at", "actor", "changes", "skipped")
    readonly_fields = ("started_at", "finished_at", "actor", "changes", "skipped", "summary")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
