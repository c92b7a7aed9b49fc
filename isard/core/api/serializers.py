"""Serializers every API app shares: the one error shape."""

from __future__ import annotations

import copy
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from rest_framework import serializers


class ErrorSerializer(serializers.Serializer[Any]):
    """What every failed request answers, whatever failed (see isard/core/errors.py)."""

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


# For a read-only ModelSerializer: its fields are built from the model once per class.
#
# DRF builds a ModelSerializer's fields afresh for every instance (on a list, once per
# request), reading the model's fields and making each serializer field: about a tenth of
# the CPU of a request for a short list, which the dashboard and the mobile client poll. A
# field that only reads is not changed by a request (binding it to its serializer sets
# attributes on the copy), so each instance gets shallow copies of the fields built the
# first time. Not for writable fields, whose validation may keep state, nor nested
# serializers (they keep their own bound fields): both are refused.
#
# A comment, not a docstring: drf-spectacular would publish a docstring in the schema as
# the description of every serializer that has none of its own.
class FieldsBuiltOnce:
    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        cls = type(self)
        built: dict[str, serializers.Field[Any, Any, Any, Any]] | None = cls.__dict__.get(
            "_fields_built_once"
        )
        if built is None:
            built = super().get_fields()  # type: ignore[misc]
            assert built is not None
            for name, field in built.items():
                if not field.read_only or isinstance(field, serializers.BaseSerializer):
                    raise ImproperlyConfigured(
                        f"{cls.__name__}.{name} is writable or nested: its fields cannot be "
                        "built once for every instance."
                    )
            cls._fields_built_once = built  # type: ignore[attr-defined]  # two threads: either
        return {name: copy.copy(field) for name, field in built.items()}
