from __future__ import annotations

from django.contrib import admin

from templates_app.models import HardwareProfile, Media, Template


@admin.register(HardwareProfile)
class HardwareProfileAdmin(admin.ModelAdmin):
    list_display = ("name", "vcpus", "memory_mib", "disk_bus", "video_model", "firmware")


@admin.register(Template)
class TemplateAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "parent", "status", "shared_with_everyone", "created_at")
    list_filter = ("status", "shared_with_everyone")
    search_fields = ("name",)
    readonly_fields = ("disk", "status", "status_reason", "deleted_at")
    filter_horizontal = ("shared_courses", "shared_users")


@admin.register(Media)
class MediaAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "status", "progress_percent", "size_bytes")
    readonly_fields = ("status", "status_reason", "progress_percent", "size_bytes", "sha256")
