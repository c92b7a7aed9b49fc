"""Query parameters that are whole numbers (a page, a page size, an id): read strictly.

The schema publishes each one's bounds; anything else (empty, given twice, a float, a
sign, digits other than 0-9, out of bounds) is a 400 naming the parameter, so that the
code refuses exactly what the schema does.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request

from isard.core.api.serializers import MAX_ID


def query_whole_number(request: Request, name: str, *, maximum: int) -> int | None:
    """The query parameter `name` as a number from 1 to `maximum`, None if not given."""
    values = request.query_params.getlist(name)
    if not values:
        return None
    if len(values) > 1:
        raise ValidationError({name: ["Give it once."]})
    value = values[0]
    # `isdecimal`, not `isdigit`: int() refuses superscripts, which isdigit accepts.
    if value.isascii() and value.isdecimal() and len(value) <= len(str(maximum)):
        number = int(value)
        if 1 <= number <= maximum:
            return number
    raise ValidationError({name: [f"A whole number from 1 to {maximum}."]})


def query_id(request: Request, name: str) -> int | None:
    """An object's id in the query string, None if not given."""
    return query_whole_number(request, name, maximum=MAX_ID)


def id_parameter(name: str, description: str) -> OpenApiParameter:
    """The schema of a `query_id` parameter."""
    schema = {"type": "integer", "format": "int64", "minimum": 1, "maximum": MAX_ID}
    return OpenApiParameter(name, schema, required=False, description=description)
