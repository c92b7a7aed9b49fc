"""What the API shows of desktops, their events and deployments."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone
from rest_framework import serializers

from desktops.choices import DesktopStatus
from desktops.models import Deployment, Desktop, DesktopEvent, DirectLink, EarlierDisk
from desktops.services.deployments import deployment_desktops
from isard.core.api.serializers import FieldsBuiltOnce, id_field
from isard.core.text import validate_name, validate_text


class DesktopSerializer(FieldsBuiltOnce, serializers.ModelSerializer[Desktop]):
    owner_username = serializers.CharField(source="owner.username", read_only=True)
    status_label = serializers.CharField(source="get_status_display", read_only=True)

    class Meta:
        model = Desktop
        fields = [
            "id",
            "uuid",
            "name",
            "description",
            "owner",
            "owner_username",
            "course",
            "template",
            "deployment",
            "hardware",
            "volatile",
            "session_ends_at",
            "status",
            "status_label",
            "status_reason",
            "status_changed_at",
            "deleted_at",
            "created_at",
        ]
        read_only_fields = fields


class DesktopCreateSerializer(serializers.Serializer[Any]):
    """From a template, or (teachers) from install media with a hardware profile."""

    template = id_field(
        required=False, allow_null=True, default=None, help_text="A template shared with you."
    )
    media = id_field(
        required=False,
        allow_null=True,
        default=None,
        help_text="Instead of a template: an empty disk that boots from this ISO (teachers).",
    )
    hardware = id_field(
        required=False, allow_null=True, default=None, help_text="The hardware, with `media`."
    )
    name = serializers.CharField(validators=[validate_name], max_length=200)
    description = serializers.CharField(
        validators=[validate_text], required=False, allow_blank=True, default=""
    )

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        if (data["template"] is None) == (data["media"] is None):
            raise serializers.ValidationError("Give either a template or install media.")
        if data["media"] is not None and data["hardware"] is None:
            raise serializers.ValidationError({"hardware": "A desktop from media needs one."})
        return data


class DesktopEventSerializer(serializers.ModelSerializer[DesktopEvent]):
    # Blank on a desktop's first event: said explicitly, or the schema forbids "".
    from_status = serializers.ChoiceField(
        choices=DesktopStatus.choices, allow_blank=True, read_only=True
    )
    actor_username = serializers.CharField(source="actor.username", read_only=True, allow_null=True)

    class Meta:
        model = DesktopEvent
        fields = ["id", "from_status", "to_status", "reason", "actor", "actor_username"]
        fields += ["created_at"]
        read_only_fields = fields


class ViewerAccessSerializer(serializers.Serializer[Any]):
    """Opens the browser viewer: connect noVNC to `path` (no password needed), once, soon."""

    desktop = serializers.IntegerField()
    name = serializers.CharField()
    path = serializers.CharField(help_text="The websocket path; the token in it works once.")
    expires_at = serializers.DateTimeField()


class DeploymentSerializer(serializers.ModelSerializer[Deployment]):
    owner_username = serializers.CharField(source="owner.username", read_only=True)
    desktop_count = serializers.SerializerMethodField()

    class Meta:
        model = Deployment
        fields = [
            "id",
            "name",
            "description",
            "course",
            "template",
            "owner",
            "owner_username",
            "co_teachers",
            "whole_course",
            "students",
            "visible",
            "volatile",
            "desktop_count",
            "deleted_at",
            "created_at",
        ]
        read_only_fields = fields

    def get_desktop_count(self, deployment: Deployment) -> int:
        return deployment_desktops(deployment).count()


class DeploymentCreateSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(validators=[validate_name], max_length=200)
    description = serializers.CharField(
        validators=[validate_text], required=False, allow_blank=True, default=""
    )
    course = id_field()
    template = id_field()
    students = serializers.ListField(
        child=id_field(),
        required=False,
        allow_null=True,
        default=None,
        help_text="Only these students of the course; leave out for all of them, "
        "including those who join later.",
    )
    co_teachers = serializers.ListField(child=id_field(), required=False, default=list)
    visible = serializers.BooleanField(required=False, default=True)
    volatile = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Each desktop goes back to the template when it stops or its student signs out.",
    )


class DeploymentUpdateSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(validators=[validate_name], max_length=200, required=False)
    description = serializers.CharField(
        validators=[validate_text], required=False, allow_blank=True
    )
    volatile = serializers.BooleanField(required=False)


class EarlierDiskSerializer(serializers.ModelSerializer[EarlierDisk]):
    size_bytes = serializers.IntegerField(source="disk.actual_size_bytes", read_only=True)
    purge_at = serializers.SerializerMethodField()

    class Meta:
        model = EarlierDisk
        fields = ["id", "put_aside_at", "size_bytes", "purge_at"]
        read_only_fields = fields

    def get_purge_at(self, earlier: EarlierDisk) -> datetime:
        return earlier.put_aside_at + timedelta(days=settings.ISARD_RECYCLE_RETENTION_DAYS)


class PutBackSerializer(serializers.Serializer[Any]):
    earlier_disk = id_field(help_text="One of the desktop's earlier disks (`earlier_disks`).")


class DeploymentCoTeachersSerializer(serializers.Serializer[Any]):
    co_teachers = serializers.ListField(child=id_field())


class DeploymentRecreateSerializer(serializers.Serializer[Any]):
    desktops = serializers.ListField(
        child=id_field(),
        required=False,
        allow_null=True,
        default=None,
        help_text="Only these desktops of the deployment; leave out for all of them.",
    )
    template = id_field(
        required=False,
        allow_null=True,
        default=None,
        help_text="A newer template to use from now on; leave out for the current one.",
    )


class DeploymentStopSerializer(serializers.Serializer[Any]):
    force = serializers.BooleanField(
        required=False, default=False, help_text="Pull the plug instead of an ACPI shutdown."
    )


class RefusalSerializer(serializers.Serializer[Any]):
    desktop = serializers.IntegerField()
    message = serializers.CharField()


class DeploymentOutcomeSerializer(serializers.Serializer[Any]):
    """A bulk action's result: the deployment, what changed and what was refused, and why."""

    deployment = DeploymentSerializer()
    changed = DesktopSerializer(many=True)
    refused = RefusalSerializer(many=True)


class DirectLinkSerializer(serializers.ModelSerializer[DirectLink]):
    """A direct link to a desktop's browser viewer (its URL was shown once, when made)."""

    created_by_username = serializers.CharField(source="created_by.username", read_only=True)
    desktop_name = serializers.CharField(source="desktop.name", read_only=True)
    live = serializers.SerializerMethodField(help_text="Neither revoked nor expired now.")

    class Meta:
        model = DirectLink
        fields = ["id", "desktop", "desktop_name", "created_by", "created_by_username"]
        fields += ["created_at", "expires_at", "revoked_at", "last_used_at", "uses", "live"]
        read_only_fields = fields

    def get_live(self, link: DirectLink) -> bool:
        return link.is_live(timezone.now())


class DirectLinkCreateSerializer(serializers.Serializer[Any]):
    hours = serializers.IntegerField(
        required=False,
        allow_null=True,
        default=None,
        min_value=1,
        max_value=settings.ISARD_DIRECT_LINK_MAX_HOURS,
        help_text="How long the link works (default: ISARD_DIRECT_LINK_HOURS).",
    )


class DirectLinkIssuedSerializer(serializers.Serializer[Any]):
    """A link just made: `url` holds its secret and is never shown again."""

    id = serializers.IntegerField()
    desktop = serializers.IntegerField()
    username = serializers.CharField(help_text="The desktop's owner.")
    desktop_name = serializers.CharField()
    url = serializers.CharField(help_text="Opens the desktop's viewer without signing in.")
    expires_at = serializers.DateTimeField()


class DirectLinkBatchSerializer(serializers.Serializer[Any]):
    """One new link per desktop of a deployment (the rows of its CSV)."""

    links = DirectLinkIssuedSerializer(many=True)


class DirectLinksRevokedSerializer(serializers.Serializer[Any]):
    revoked = serializers.IntegerField(help_text="How many live links were revoked.")
