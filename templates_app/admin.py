from __future__ import annotations

from typing import Any, ClassVar, cast

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts import permissions
from accounts.admin_scope import ManagerAccess, ReadOnlyForManagersAdmin, ScopedModelAdmin
from accounts.models import User
from isard.exceptions import ApplicationError
from templates_app.models import HardwareProfile, Media, Template
from templates_app.services import template_flatten


@admin.register(HardwareProfile)
class HardwareProfileAdmin(ReadOnlyForManagersAdmin):
    list_display = ("name", "vcpus", "memory_mib", "disk_bus", "video_model", "firmware")


@admin.action(description="Make a standalone copy (flatten) of each selected template")
def flatten(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Template]
) -> None:
    for template in queryset:
        try:
            template_flatten(
                actor=cast(User, request.user),
                template=template,
                name=f"{template.name} (standalone)",
            )
            modeladmin.message_user(request, f"Copying “{template.name}”.", messages.SUCCESS)
        except ApplicationError as error:
            modeladmin.message_user(request, f"{template}: {error.message}", messages.ERROR)


@admin.register(Template)
class TemplateAdmin(ScopedModelAdmin):
    manager_access: ClassVar[ManagerAccess] = "write"
    actions = [flatten]
    list_display = (
        "name",
        "owner",
        "parent",
        "status",
        "progress_percent",
        "shared_with_everyone",
        "created_at",
    )
    list_filter = ("status", "shared_with_everyone")
    search_fields = ("name",)
    readonly_fields = ("disk", "status", "status_reason", "deleted_at")
    filter_horizontal = ("shared_courses", "shared_users")

    def scope_queryset(self, actor: User, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(pk__in=permissions.templates_managed_by(actor).values("pk"))


@admin.register(Media)
class MediaAdmin(ScopedModelAdmin):
    manager_access: ClassVar[ManagerAccess] = "write"
    list_display = ("name", "kind", "status", "progress_percent", "size_bytes")
    readonly_fields = ("status", "status_reason", "progress_percent", "size_bytes", "sha256")

    def scope_queryset(self, actor: User, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(pk__in=permissions.media_managed_by(actor).values("pk"))
