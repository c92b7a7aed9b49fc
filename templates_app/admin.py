"""Templates, hardware profiles and media in the admin, scoped by role (`accounts.admin_scope`).

A teacher edits the name, description and sharing of their own templates (sharing goes
through `template_set_sharing`, which decides with whom they may share: their courses and
the people of those courses; only an administrator shares with everyone), flattens them,
and moves them to the recycle bin and back. They see their own media, read-only.

A media row's file is what a desktop's CD-ROM shows its guest, and libvirt hands it to
qemu whoever owns it: only an administrator edits the path (school managers see it), and
only to a file inside the media pool (`media_path_check`).
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest

from accounts import permissions
from accounts.admin_scope import (
    ManagerAccess,
    ReadOnlyForManagersAdmin,
    ScopedModelAdmin,
    request_actor,
)
from accounts.models import User
from isard.core.errors import ApplicationError
from templates_app.models import HardwareProfile, Media, Template
from templates_app.permissions import media_managed_by, templates_managed_by
from templates_app.services.flatten import template_flatten
from templates_app.services.media import media_delete, media_path_check
from templates_app.services.templates import template_delete, template_restore, template_set_sharing


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


@admin.action(description="Move the selected templates to the recycle bin")
def recycle(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Template]
) -> None:
    for template in queryset:
        try:
            template_delete(actor=cast(User, request.user), template=template)
            modeladmin.message_user(request, f"“{template.name}” is in the recycle bin.")
        except ApplicationError as error:
            modeladmin.message_user(request, f"{template}: {error.message}", messages.ERROR)


@admin.action(description="Restore the selected templates from the recycle bin")
def restore(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Template]
) -> None:
    for template in queryset:
        try:
            template_restore(actor=cast(User, request.user), template=template)
            modeladmin.message_user(request, f"“{template.name}” is back.")
        except ApplicationError as error:
            modeladmin.message_user(request, f"{template}: {error.message}", messages.ERROR)


@admin.register(Template)
class TemplateAdmin(ScopedModelAdmin):
    manager_access: ClassVar[ManagerAccess] = "write"
    teacher_access: ClassVar[ManagerAccess] = "write"
    actions = [flatten, recycle, restore]
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
        return queryset.filter(pk__in=templates_managed_by(actor).values("pk"))

    def _role(self, request: HttpRequest) -> str | None:
        actor = request_actor(request)
        return permissions.admin_role(actor) if actor is not None else None

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = tuple(super().get_readonly_fields(request, obj))
        role = self._role(request)
        if role == "admin":
            return fields
        fields += ("shared_with_everyone",)  # only administrators share with everyone
        if role == "teacher":
            # A template is made from a desktop; its teacher names, describes and shares it.
            fields += ("owner", "parent", "hardware", "progress_percent")
        return fields

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        # Teachers make templates from their desktops (the desktop action), never a bare row.
        return self._role(request) != "teacher" and super().has_add_permission(request, *args)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A teacher's delete is the recycle bin (the action); purging is the purge task's.
        return self._role(request) != "teacher" and super().has_delete_permission(request, obj)

    def save_related(
        self, request: HttpRequest, form: ModelForm, formsets: Any, change: bool
    ) -> None:
        """Sharing through `template_set_sharing`, which checks with whom the person may
        share, rather than the form writing the many-to-many rows itself."""
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)
        actor = request_actor(request)
        if actor is None:
            raise PermissionDenied
        data = form.cleaned_data
        courses = data.get("shared_courses")
        users = data.get("shared_users")
        try:
            template_set_sharing(
                actor=actor,
                template=form.instance,
                courses=list(courses) if courses is not None else None,
                users=list(users) if users is not None else None,
            )
        except ApplicationError as error:
            raise PermissionDenied(error.message) from error


class MediaAdminForm(forms.ModelForm):
    class Meta:
        model = Media
        fields = ["name", "kind", "owner", "path"]

    def clean_path(self) -> str:
        path: str = self.cleaned_data["path"]
        try:
            media_path_check(path)
        except ApplicationError as error:
            raise forms.ValidationError(error.message) from error
        return path


@admin.register(Media)
class MediaAdmin(ScopedModelAdmin):
    manager_access: ClassVar[ManagerAccess] = "write"
    teacher_access: ClassVar[ManagerAccess] = "read"
    form = MediaAdminForm
    list_display = ("name", "kind", "status", "progress_percent", "size_bytes")
    readonly_fields = ("status", "status_reason", "progress_percent", "size_bytes", "sha256")

    def scope_queryset(self, actor: User, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(pk__in=media_managed_by(actor).values("pk"))

    def _is_admin(self, request: HttpRequest) -> bool:
        actor = request_actor(request)
        return actor is not None and permissions.admin_role(actor) == "admin"

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = tuple(super().get_readonly_fields(request, obj))
        return fields if self._is_admin(request) else (*fields, "path")

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        # A media row by path is an administrator's; others upload or register media,
        # which puts the file in the media pool.
        return self._is_admin(request) and super().has_add_permission(request, *args)

    def delete_model(self, request: HttpRequest, obj: Media) -> None:
        """Deleting media here removes its file too (`media_delete`), or says why not."""
        try:
            media_delete(actor=cast(User, request.user), media=obj)
        except ApplicationError as error:
            messages.error(request, error.message)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        for media in queryset:
            self.delete_model(request, media)
