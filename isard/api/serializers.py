"""Serializers every API app shares: the one error shape."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers


class ErrorSerializer(serializers.Serializer[Any]):
    """What every failed request answers, whatever failed (see isard/exceptions.py)."""

    message = serializers.CharField(help_text="What went wrong, for a person to read.")
    extra = serializers.DictField(
        child=serializers.JSONField(),
        help_text="Details for code: `fields` (bad input), `status` (wrong state), "
        "`retry_after` (throttled), `reason`...",
    )
