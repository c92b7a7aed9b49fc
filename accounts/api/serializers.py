"""What the API shows of people, their tokens and courses."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from accounts.models import ApiToken, Course, CourseMembership, Quota, User
from accounts.services.courses import SESSION_NUMBERS
from isard.core.text import validate_name


class LoginSerializer(serializers.Serializer[Any]):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=1024, style={"input_type": "password"})
    token_name = serializers.CharField(
        validators=[validate_name],
        max_length=100,
        required=False,
        allow_blank=True,
        help_text="A name to recognise the token by later, e.g. “my phone”.",
    )


class ApiTokenSerializer(serializers.ModelSerializer[ApiToken]):
    class Meta:
        model = ApiToken
        fields = ["id", "name", "prefix", "created_at", "last_used_at", "expires_at"]
        read_only_fields = fields


class UserSerializer(serializers.ModelSerializer[User]):
    # Blank when unknown: a plain string, not format "email", which "" would break.
    email = serializers.CharField(read_only=True, help_text="Empty when unknown.")
    school_name = serializers.CharField(source="school.name", read_only=True, allow_null=True)

    class Meta:
        model = User
        fields = ["id", "username", "first_name", "last_name", "email", "role", "school"]
        fields += ["school_name"]
        read_only_fields = fields


class MeSerializer(UserSerializer):
    is_admin = serializers.BooleanField(read_only=True)
    is_teacher = serializers.BooleanField(read_only=True)

    class Meta(UserSerializer.Meta):
        fields = [*UserSerializer.Meta.fields, "is_admin", "is_teacher"]
        read_only_fields = fields


class LoginResponseSerializer(serializers.Serializer[Any]):
    token = serializers.CharField(help_text="Send as `Authorization: Bearer <token>`; shown once.")
    token_info = ApiTokenSerializer()
    user = MeSerializer()


class CourseSerializer(serializers.ModelSerializer[Course]):
    school_name = serializers.CharField(source="school.name", read_only=True)
    my_role = serializers.SerializerMethodField(help_text="Your role in it, if a member.")
    can_manage = serializers.SerializerMethodField(
        help_text="Whether you may deploy to it and see its members."
    )

    class Meta:
        model = Course
        fields = ["id", "name", "school", "school_name", "my_role", "can_manage"]
        fields += ["students_may_reset", "session_limit_minutes", "session_warning_minutes"]
        fields += ["session_extensions", "session_extension_minutes", "idle_shutdown_minutes"]
        read_only_fields = fields

    def _managed_ids(self) -> set[int]:
        return set(self.context.get("managed_course_ids", ()))

    def get_my_role(self, course: Course) -> str | None:
        roles: dict[int, str] = self.context.get("my_roles", {})
        return roles.get(course.pk)

    def get_can_manage(self, course: Course) -> bool:
        return course.pk in self._managed_ids()


class MemberSerializer(serializers.ModelSerializer[CourseMembership]):
    username = serializers.CharField(source="user.username", read_only=True)
    first_name = serializers.CharField(source="user.first_name", read_only=True)
    last_name = serializers.CharField(source="user.last_name", read_only=True)

    class Meta:
        model = CourseMembership
        fields = ["id", "user", "username", "first_name", "last_name", "role", "source"]
        read_only_fields = fields


class UsageLineSerializer(serializers.Serializer[Any]):
    """One limit: what the person uses, what they may, and which quota says so."""

    kind = serializers.CharField(
        help_text="desktops, running, vcpus, memory, disk, templates, media"
    )
    title = serializers.CharField(help_text="What the limit is about, for people.")
    in_use = serializers.IntegerField(help_text="Disk in bytes, memory in MiB, else a count.")
    allowed = serializers.IntegerField(allow_null=True, help_text="null: unlimited")
    in_use_text = serializers.CharField()
    allowed_text = serializers.CharField()
    set_by = serializers.CharField(help_text="The quota that sets this limit, or 'not set'.")
    full = serializers.BooleanField(help_text="Nothing more of this kind may be added.")


class QuotaSerializer(serializers.ModelSerializer[Quota]):
    scope = serializers.CharField(source="scope_label", read_only=True)

    class Meta:
        model = Quota
        fields = [
            "id",
            "scope",
            "user",
            "course",
            "school",
            "role",
            "max_desktops",
            "max_running",
            "max_vcpus",
            "max_memory_mib",
            "max_disk_gib",
            "max_templates",
            "max_media",
        ]
        read_only_fields = fields


class CourseSettingsSerializer(serializers.ModelSerializer[Course]):
    """What a course's teachers set; each field optional (left out: unchanged). The bounds
    are the model's."""

    class Meta:
        model = Course
        fields = ["students_may_reset", *SESSION_NUMBERS]
        extra_kwargs = {name: {"required": False} for name in fields}
