"""Filtering for every list of the API (django-filter).

A foreign key is filtered by its id as a plain number. django-filter's default (a choice
among every row of the related table) would answer 400 for an id that does not exist and
200 for one that does but is not the caller's, telling strangers which ids exist.

A filter named with no value (`?course=`) is a 400, like any value its schema refuses:
django-filter's default reads it as "no filter", a request that says one thing and
means another (leave the parameter out to not filter).
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import django_filters  # type: ignore[import-untyped]
from django import forms
from django.db import models
from django_filters.rest_framework import DjangoFilterBackend  # type: ignore[import-untyped]
from django_filters.rest_framework.filterset import (  # type: ignore[import-untyped]
    FILTER_FOR_DBFIELD_DEFAULTS,
)
from django_filters.utils import translate_validation  # type: ignore[import-untyped]
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import filters
from rest_framework.exceptions import ValidationError

from isard.core.api.serializers import MAX_ID
from isard.core.text import NO_NUL_PATTERN


def _by_id(field: Any) -> dict[str, Any]:
    return {"min_value": 1, "max_value": MAX_ID}


class StrictBooleanField(forms.Field):
    """`true` or `false`, as the schema's boolean is written in a query string.

    django-filter's BooleanFilter reads any other text as "no filter", so a typo (`?deleted=yes`)
    answered the whole list.
    """

    def to_python(self, value: Any) -> bool | None:
        if value in self.empty_values:
            return None
        if value in ("true", "false"):
            return bool(value == "true")
        raise forms.ValidationError("true or false.", code="invalid")


@extend_schema_field(OpenApiTypes.BOOL)
class BooleanFilter(django_filters.BooleanFilter):
    field_class = StrictBooleanField


class FilterSet(django_filters.rest_framework.FilterSet):
    FILTER_DEFAULTS = {
        **FILTER_FOR_DBFIELD_DEFAULTS,
        models.BooleanField: {"filter_class": BooleanFilter},
        models.ForeignKey: {"filter_class": django_filters.NumberFilter, "extra": _by_id},
        models.OneToOneField: {"filter_class": django_filters.NumberFilter, "extra": _by_id},
    }


class FilterBackend(DjangoFilterBackend):
    """django-filter's backend, at no cost for a request that filters on nothing.

    Building a FilterSet (a deep copy of every filter, then a form to validate) cost about
    a tenth of a request to list one's desktops, which the dashboard and the mobile client
    poll without any filter. django-filter's filters (and `method=` filters) given no
    value filter nothing, so a request whose query string names no filter skips the
    FilterSet. (A FilterSet with a required filter, or its own `filter_queryset` or `qs`,
    always runs; so would a filter class of our own that filters on an empty value, of
    which there is none.) The FilterSet made from
    a view's `filterset_fields` is made once per view class, not once per request.
    """

    filterset_base = FilterSet
    _auto_filtersets: ClassVar[dict[tuple[type, type, str], type]] = {}

    def get_filterset_class(self, view: Any, queryset: Any = None) -> Any:
        fields = getattr(view, "filterset_fields", None)
        if getattr(view, "filterset_class", None) or not fields or queryset is None:
            return super().get_filterset_class(view, queryset)
        key = (type(view), queryset.model, repr(fields))
        made = self._auto_filtersets.get(key)
        if made is None:
            made = super().get_filterset_class(view, queryset)
            self._auto_filtersets[key] = made
        return made

    def filter_queryset(self, request: Any, queryset: Any, view: Any) -> Any:
        filterset_class = self.get_filterset_class(view, queryset)
        if filterset_class is None:
            return queryset
        names, always = _filter_names(filterset_class)
        empty = sorted(
            key
            for key in request.query_params
            if key in filterset_class.base_filters and "" in request.query_params.getlist(key)
        )
        if empty:
            raise ValidationError(
                {key: ["Give a value, or leave the parameter out."] for key in empty}
            )
        if not always and not any(key.startswith(names) for key in request.query_params):
            return queryset
        filterset = filterset_class(**self.get_filterset_kwargs(request, queryset, view))
        if not filterset.is_valid() and self.raise_exception:
            raise translate_validation(filterset.errors)
        return filterset.qs


@functools.lru_cache(maxsize=256)
def _filter_names(filterset_class: type) -> tuple[tuple[str, ...], bool]:
    """The query parameters a FilterSet reads (a name, or a name and a suffix such as
    `_min`), and whether it must run without any of them."""
    filters = filterset_class.base_filters  # type: ignore[attr-defined]
    base = django_filters.FilterSet
    always = (
        any(item.extra.get("required") for item in filters.values())
        or getattr(filterset_class, "filter_queryset", None) is not base.filter_queryset
        or getattr(filterset_class, "qs", None) is not base.qs
    )
    return tuple(filters), always


class SearchFilter(filters.SearchFilter):
    """DRF's `?search=`, its bad input named like any other (`extra.fields.search`) and
    its refusal of NUL published in the schema."""

    def get_search_terms(self, request: Any) -> Any:
        try:
            return super().get_search_terms(request)
        except ValidationError as error:
            raise ValidationError({self.search_param: error.detail}) from error

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters: list[dict[str, Any]] = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            parameter["schema"]["pattern"] = NO_NUL_PATTERN
        return parameters
