"""The API's exception handler: the shared one, plus details for clients that retry."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler

from isard.core.errors import ApplicationError, TooManyRequestsError


def _shared_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ApplicationError):
        return Response({"message": exc.message, "extra": exc.extra}, status=exc.status_code)
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, drf_exceptions.ValidationError):
        return Response(
            {"message": "Invalid input.", "extra": {"fields": response.data}},
            status=response.status_code,
        )
    detail = response.data.get("detail") if isinstance(response.data, dict) else None
    response.data = {"message": str(detail or exc), "extra": {}}
    return response


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    response = _shared_handler(exc, context)
    if response is not None and isinstance(exc, drf_exceptions.Throttled):
        response.data["extra"] = {"retry_after": getattr(exc, "wait", None)}
    if response is not None and isinstance(exc, TooManyRequestsError):
        # A service's own limit (failed sign-ins): the same advice as DRF's throttles give.
        response["Retry-After"] = str(exc.extra["retry_after"])
    return response


@csrf_exempt  # it changes nothing; a POST must get this 404, not an HTML CSRF page
def api_not_found(request: HttpRequest, unmatched: str = "") -> JsonResponse:
    """Any path under /api/v1/ that names no endpoint: the same error shape as the rest."""
    return JsonResponse({"message": f"No API endpoint at {request.path}.", "extra": {}}, status=404)
