"""What the API shows of hypervisors (administrators and school managers only)."""

from __future__ import annotations

from typing import Any

from django.core.validators import RegexValidator
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from desktops.fleet.selectors import drain_progress
from hypervisors.choices import Accelerator, DrainPolicy
from hypervisors.models import Hypervisor
from isard.core.text import validate_name


class DrainProgressSerializer(serializers.Serializer[Any]):
    total = serializers.IntegerField()
    remaining = serializers.IntegerField()
    migrated = serializers.IntegerField()
    stopped = serializers.IntegerField()
    failed = serializers.IntegerField()
    finished = serializers.BooleanField()


class HypervisorSerializer(serializers.ModelSerializer[Hypervisor]):
    # Blank until detected / until a drain: said explicitly, or the schema forbids "".
    accelerator = serializers.ChoiceField(
        choices=Accelerator.choices, allow_blank=True, read_only=True
    )
    drain_policy = serializers.ChoiceField(
        choices=DrainPolicy.choices, allow_blank=True, read_only=True
    )
    drain = serializers.SerializerMethodField()

    class Meta:
        model = Hypervisor
        fields = [
            "id",
            "name",
            "uri",
            "accelerator_setting",
            "accelerator",
            "accelerator_detail",
            "mode",
            "state",
            "last_error",
            "last_seen_at",
            "cpus",
            "memory_mib",
            "free_memory_mib",
            "running_domains",
            "cpu_load",
            "cpu_overcommit",
            "memory_overcommit",
            "tags",
            "drain_policy",
            "drain",
            "created_at",
        ]
        read_only_fields = fields

    @extend_schema_field(DrainProgressSerializer(allow_null=True))
    def get_drain(self, hypervisor: Hypervisor) -> dict[str, Any] | None:
        """How far its drain has come; null if it was never drained."""
        progress = drain_progress(hypervisor)
        return None if progress is None else DrainProgressSerializer(progress).data


class HypervisorRegisterSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(validators=[validate_name], max_length=100)
    # Printable ASCII without spaces, none trimmed: the schema's pattern and the check are
    # the same rule in JSON Schema's regexes and Python's (whose \s also takes \x1c-\x1f);
    # a blank-looking " " passed the schema's length and failed as blank after trimming.
    uri = serializers.CharField(
        max_length=500,
        trim_whitespace=False,
        validators=[RegexValidator(r"^[!-~]+$", "A libvirt URI is printable ASCII, no spaces.")],
        help_text="libvirt URI, e.g. qemu+ssh://host/system",
    )


class HypervisorDrainSerializer(serializers.Serializer[Any]):
    policy = serializers.ChoiceField(
        choices=DrainPolicy.choices,
        required=False,
        allow_null=True,
        default=None,
        help_text="Leave out for the installation's default.",
    )
