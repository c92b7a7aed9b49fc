from __future__ import annotations

from typing import Any, ClassVar, cast

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from accounts import permissions
from accounts.admin_scope import ManagerAccess, RoleScopedMixin, ScopedModelAdmin
from accounts.models import User
from desktops import services
from desktops.models import Desktop, DesktopEvent
from isard.exceptions import ApplicationError


class DesktopEventInline(RoleScopedMixin, admin.TabularInline):
    manager_access: ClassVar[ManagerAccess] = "read"
    model = DesktopEvent
    extra = 0
    can_delete = False
    readonly_fields = ("created_at", "from_status", "to_status", "reason", "actor")

    def scope_queryset(self, actor: User, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(desktop__in=permissions.desktops_visible_to(actor))

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return False


def _run(action: str) -> Any:
    service = getattr(services, f"desktop_{action}")

    def run(
        modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Desktop]
    ) -> None:
        done = 0
        for desktop in queryset:
            try:
                service(actor=cast(User, request.user), desktop=desktop)
                done += 1
            except ApplicationError as error:
                modeladmin.message_user(request, f"{desktop}: {error.message}", messages.ERROR)
        if done:
            modeladmin.message_user(request, f"{action}: {done} desktop(s).", messages.SUCCESS)

    run.__name__ = f"action_{action}"
    run.short_description = f"{action.capitalize()} selected desktops"  # type: ignore[attr-defined]
    return run


@admin.action(description="Make a template of each selected (stopped) desktop")
def make_template(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Desktop]
) -> None:
    from templates_app.services import template_from_desktop

    for desktop in queryset:
        name = f"{desktop.name} ({timezone.localtime():%Y-%m-%d %H:%M})"
        try:
            template_from_desktop(actor=cast(User, request.user), desktop_id=desktop.pk, name=name)
            modeladmin.message_user(request, f"Making the template “{name}”.", messages.SUCCESS)
        except ApplicationError as error:
            modeladmin.message_user(request, f"{desktop}: {error.message}", messages.ERROR)


@admin.register(Desktop)
class DesktopAdmin(ScopedModelAdmin):
    manager_access: ClassVar[ManagerAccess] = "write"
    list_display = (
        "name",
        "owner",
        "course",
        "template",
        "status",
        "hypervisor",
        "status_changed_at",
    )
    list_filter = ("status", "hypervisor", ("course", admin.RelatedOnlyFieldListFilter))
    search_fields = ("name", "owner__username")
    readonly_fields = (
        "uuid",
        "status",
        "status_reason",
        "status_changed_at",
        "disk",
        "hypervisor",
        "deleted_at",
        "graphics_password",
    )
    inlines = [DesktopEventInline]
    actions = [
        *(_run(a) for a in ("start", "shutdown", "stop", "delete", "restore")),
        make_template,
    ]

    def scope_queryset(self, actor: User, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(pk__in=permissions.desktops_visible_to(actor).values("pk"))


# Issue 5: the audit of viewer tokens.
from desktops.models import ViewerToken  # noqa: E402


@admin.register(ViewerToken)
class ViewerTokenAdmin(ScopedModelAdmin):
    """Who opened which desktop's viewer, when and from where (read-only audit)."""

    manager_access: ClassVar[ManagerAccess] = "read"

    def scope_queryset(self, actor: User, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(desktop__in=permissions.desktops_visible_to(actor))

    list_display = (
        "desktop",
        "user",
        "protocol",
        "created_at",
        "expires_at",
        "used_at",
        "used_from",
    )
    list_filter = ("protocol",)
    search_fields = ("desktop__name", "user__username", "used_from")
    readonly_fields = (
        "key_hash",
        "user",
        "desktop",
        "protocol",
        "created_at",
        "expires_at",
        "used_at",
        "used_from",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(DesktopEvent)
class DesktopEventAdmin(ScopedModelAdmin):
    """The event log: every status change and notable action of every desktop, newest
    first, to answer "what happened to this class's desktops this morning". Read-only: an
    audit that could be edited would prove nothing."""

    manager_access: ClassVar[ManagerAccess] = "read"
    list_display = (
        "created_at",
        "desktop",
        "owner",
        "course",
        "from_status",
        "to_status",
        "reason",
        "actor",
    )
    list_filter = (
        "to_status",
        ("desktop__course", admin.RelatedOnlyFieldListFilter),
        ("desktop__hypervisor", admin.RelatedOnlyFieldListFilter),
    )
    search_fields = ("desktop__name", "desktop__owner__username", "actor__username", "reason")
    date_hierarchy = "created_at"
    ordering = ("-created_at", "-pk")
    list_select_related = ("desktop__owner", "desktop__course", "actor")
    readonly_fields = ("created_at", "desktop", "from_status", "to_status", "reason", "actor")

    def scope_queryset(self, actor: User, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(desktop__in=permissions.desktops_visible_to(actor))

    @admin.display(description="owner", ordering="desktop__owner__username")
    def owner(self, event: DesktopEvent) -> str:
        return event.desktop.owner.get_username()

    @admin.display(description="course", ordering="desktop__course__name")
    def course(self, event: DesktopEvent) -> str:
        return event.desktop.course.name if event.desktop.course else "-"

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
