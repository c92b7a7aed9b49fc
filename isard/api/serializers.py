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


#: The largest id a 64-bit primary key holds: bigger numbers are bad input, not a crash
#: of the database driver (`IN (...)` lookups do not check the range by themselves).
MAX_ID = 2**63 - 1


def id_field(**kwargs: Any) -> serializers.IntegerField:
    """An object's id in a request body."""
    return serializers.IntegerField(min_value=1, max_value=MAX_ID, **kwargs)
