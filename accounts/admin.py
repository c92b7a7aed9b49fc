from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.models import (
    Course,
    CourseMembership,
    LdapAccount,
    LdapGroupMapping,
    LdapSyncRun,
    School,
    User,
)
from accounts.services import ldap_sync
from isard.exceptions import ApplicationError


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    list_display = ("username", "first_name", "last_name", "role", "school", "is_active")
    list_filter = ("role", "school", "is_active")
    fieldsets = (*(DjangoUserAdmin.fieldsets or ()), ("isard", {"fields": ("role", "school")}))


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
