"""FieldsBuiltOnce: the same representation as DRF's own, with fields built once per class."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from rest_framework import serializers

from desktops.api.serializers import DesktopSerializer
from desktops.models import Desktop
from isard.core.api.serializers import FieldsBuiltOnce
from tests.campus import Campus


class DjangosDesktopSerializer(DesktopSerializer):
    """The same declaration, its fields built by DRF for every instance."""

    def get_fields(self) -> dict[str, Any]:
        return serializers.ModelSerializer.get_fields(self)


@pytest.mark.django_db
def test_desktops_are_shown_as_drf_shows_them(north: Campus) -> None:
    desktops = list(Desktop.objects.select_related("owner").order_by("pk"))
    expected = DjangosDesktopSerializer(desktops, many=True).data
    for _ in range(2):  # built the first time, copied the next
        assert DesktopSerializer(desktops, many=True).data == expected
        assert DesktopSerializer(desktops[0]).data == expected[0]
    first, second = DesktopSerializer(), DesktopSerializer()
    assert first.fields["status"] is not second.fields["status"]
    assert first.fields["status"].parent is first


def test_a_writable_serializer_cannot_build_its_fields_once() -> None:
    class Writable(FieldsBuiltOnce, serializers.ModelSerializer[Desktop]):
        class Meta:
            model = Desktop
            fields = ["name"]

    with pytest.raises(ImproperlyConfigured, match=r"Writable\.name"):
        _ = Writable().fields


def test_building_fields_once_leaves_the_published_schema_alone() -> None:
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    assert "description" not in schema["components"]["schemas"]["Desktop"]
