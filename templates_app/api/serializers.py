"""What the API shows of templates, hardware profiles and install media."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from accounts.models import Course, User
from isard.core.api.serializers import id_field
from isard.core.text import validate_name, validate_text
from templates_app.models import HardwareProfile, Media, Template


class TemplateSerializer(serializers.ModelSerializer[Template]):
    owner_username = serializers.CharField(source="owner.username", read_only=True, allow_null=True)
    can_manage = serializers.SerializerMethodField(
        help_text="Whether you may share, delete and restore it."
    )

    class Meta:
        model = Template
        fields = [
            "id",
            "name",
            "description",
            "owner",
            "owner_username",
            "parent",
            "hardware",
            "status",
            "status_reason",
            "progress_percent",
            "deleted_at",
            "created_at",
            "can_manage",
        ]
        read_only_fields = fields

    def get_can_manage(self, template: Template) -> bool:
        return template.pk in self.context.get("managed_template_ids", ())


class TemplateFromDesktopSerializer(serializers.Serializer[Any]):
    desktop = id_field(help_text="A stopped desktop of yours; it continues on the new template.")
    name = serializers.CharField(validators=[validate_name], max_length=200)
    description = serializers.CharField(
        validators=[validate_text], required=False, allow_blank=True, default=""
    )


class TemplateSharingSerializer(serializers.Serializer[Any]):
    shared_with_everyone = serializers.BooleanField(required=False)
    shared_courses = serializers.PrimaryKeyRelatedField(
        many=True, queryset=Course.objects.all(), required=False
    )
    shared_users = serializers.PrimaryKeyRelatedField(
        many=True, queryset=User.objects.all(), required=False
    )


class TemplateSharingReadSerializer(serializers.ModelSerializer[Template]):
    class Meta:
        model = Template
        fields = ["shared_with_everyone", "shared_courses", "shared_users"]
        read_only_fields = fields


class TemplateLinkSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    name = serializers.CharField()


class TemplateTreeSerializer(serializers.Serializer[Any]):
    ancestors = TemplateLinkSerializer(many=True, help_text="From the root down to the parent.")
    children = TemplateLinkSerializer(many=True, help_text="Those you may see.")


class TemplateDependantsSerializer(serializers.Serializer[Any]):
    desktops = serializers.ListField(child=serializers.CharField())
    templates = serializers.ListField(child=serializers.CharField())
    deployments = serializers.ListField(child=serializers.CharField())


class HardwareProfileSerializer(serializers.ModelSerializer[HardwareProfile]):
    class Meta:
        model = HardwareProfile
        fields = [
            "id",
            "name",
            "vcpus",
            "memory_mib",
            "disk_bus",
            "disk_size_gib",
            "nic_model",
            "video_model",
            "firmware",
            "graphics_spice",
            "graphics_vnc",
            "usb_redirect_devices",
        ]
        read_only_fields = fields


class MediaSerializer(serializers.ModelSerializer[Media]):
    class Meta:
        model = Media
        fields = [
            "id",
            "name",
            "kind",
            "owner",
            "size_bytes",
            "sha256",
            "status",
            "status_reason",
            "progress_percent",
            "created_at",
        ]
        read_only_fields = fields
