"""Filtering for every list of the API (django-filter).

A foreign key is filtered by its id as a plain number. django-filter's default (a choice
among every row of the related table) would answer 400 for an id that does not exist and
200 for one that does but is not the caller's, telling strangers which ids exist.
"""

from __future__ import annotations

from typing import Any

import django_filters  # type: ignore[import-untyped]
from django.db import models
from django_filters.rest_framework import DjangoFilterBackend  # type: ignore[import-untyped]
from django_filters.rest_framework.filterset import (  # type: ignore[import-untyped]
    FILTER_FOR_DBFIELD_DEFAULTS,
)

from isard.api.serializers import MAX_ID


def _by_id(field: Any) -> dict[str, Any]:
    return {"min_value": 1, "max_value": MAX_ID}


class FilterSet(django_filters.rest_framework.FilterSet):
    FILTER_DEFAULTS = {
        **FILTER_FOR_DBFIELD_DEFAULTS,
        models.ForeignKey: {"filter_class": django_filters.NumberFilter, "extra": _by_id},
        models.OneToOneField: {"filter_class": django_filters.NumberFilter, "extra": _by_id},
    }


class FilterBackend(DjangoFilterBackend):
    filterset_base = FilterSet
