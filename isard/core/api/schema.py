"""OpenAPI schema generation: every operation documents the error shape it may answer.

The contract is fuzzed (schemathesis) against the running code, so an error response
must match a declared schema too: each operation gets the `Error` body for the status
codes any request may meet (bad input, no credentials, not allowed, not found, too many
requests) and writes also for the state, quota and capacity errors.

What a create answers names the object made: OpenAPI links say which operations take its
id next (a client's next step, and the fuzzer's stateful walk through the API).
"""

from __future__ import annotations

from typing import Any

from django.core.validators import ProhibitNullCharactersValidator
from drf_spectacular.contrib.django_filters import DjangoFilterExtension
from drf_spectacular.openapi import AutoSchema

from isard.core.api.serializers import ErrorSerializer
from isard.core.text import (
    NAME_PATTERN,
    NO_NUL_PATTERN,
    TEXT_PATTERN,
    validate_name,
    validate_text,
)

ANY_REQUEST_ERRORS = {
    "400": "Bad input: `extra.fields` names each field and what is wrong with it.",
    "401": "No valid credentials: sign in (session) or send `Authorization: Bearer <token>`.",
    "403": "Signed in, but not allowed to do this.",
    "404": "No such object, or not one you may see.",
    "429": "Too many requests: `Retry-After` says when to try again.",
}
WRITE_ERRORS = {
    "409": "The object is not in a state that allows this (`extra.status` says which).",
    "422": "A quota would be exceeded.",
    "502": "A hypervisor or the storage failed; the message says which and why.",
    "503": "No hypervisor can take the desktop right now.",
}


class IsardAutoSchema(AutoSchema):
    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses: dict[str, Any] = super()._get_response_bodies(direction)
        errors = dict(ANY_REQUEST_ERRORS)
        if self.method not in ("GET", "HEAD", "OPTIONS"):
            errors.update(WRITE_ERRORS)
        for code, description in errors.items():
            if code not in responses:
                response = self._get_response_for_code(ErrorSerializer, code, direction=direction)
                response["description"] = description
                responses[code] = response
        return responses

    def _insert_field_validators(self, field: Any, schema: dict[str, Any]) -> None:
        """Text says, as a pattern, which characters it refuses: a name or a description
        the control characters, any other text (DRF's CharField) the NUL character."""
        super()._insert_field_validators(field, schema)
        validators = getattr(field, "validators", ())
        if validate_name in validators:
            schema["pattern"] = NAME_PATTERN
        elif validate_text in validators:
            schema["pattern"] = TEXT_PATTERN
        elif "pattern" not in schema and any(
            isinstance(validator, ProhibitNullCharactersValidator) for validator in validators
        ):
            schema["pattern"] = NO_NUL_PATTERN


class BoundedFilterExtension(DjangoFilterExtension):
    """django-filter's parameters, with the bounds their filters check (ids: 1 to MAX_ID).

    drf-spectacular leaves a NumberFilter's `min_value`/`max_value` out, so the schema
    allowed `course=0`, which the code refuses with a 400.
    """

    priority = 1

    def resolve_filter_field(
        self, auto_schema: Any, model: Any, filterset_class: Any, field_name: str, filter_field: Any
    ) -> list[dict[str, Any]]:
        parameters: list[dict[str, Any]] = super().resolve_filter_field(
            auto_schema, model, filterset_class, field_name, filter_field
        )
        bounds = {
            key: filter_field.extra[name]
            for key, name in (("minimum", "min_value"), ("maximum", "max_value"))
            if filter_field.extra.get(name) is not None
        }
        for parameter in parameters:
            if parameter["schema"].get("type") in ("integer", "number"):
                parameter["schema"].update(bounds)
        return parameters


#: operationId of a create -> (its success status, where its body holds the id made,
#: {link name: operationId taking that id}).
CREATED_LINKS: dict[str, tuple[str, str, dict[str, str]]] = {
    "desktops_create": (
        "202",
        "/id",
        {
            "GetDesktop": "desktops_retrieve",
            "StartDesktop": "desktops_start_create",
            "DesktopEvents": "desktops_events_list",
            "DeleteDesktop": "desktops_destroy",
            "RestoreDesktop": "desktops_restore_create",
        },
    ),
    "deployments_create": (
        "202",
        "/deployment/id",
        {
            "GetDeployment": "deployments_retrieve",
            "DeploymentDesktops": "deployments_desktops_list",
            "HideDeployment": "deployments_hide_create",
            "DeleteDeployment": "deployments_destroy",
        },
    ),
    "templates_create": (
        "202",
        "/id",
        {
            "GetTemplate": "templates_retrieve",
            "TemplateTree": "templates_tree_retrieve",
            "TemplateSharing": "templates_sharing_retrieve",
            "DeleteTemplate": "templates_destroy",
        },
    ),
    "hypervisors_create": (
        "201",
        "/id",
        {"GetHypervisor": "hypervisors_retrieve", "DrainHypervisor": "hypervisors_drain_create"},
    ),
}


def add_created_links(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: the links of `CREATED_LINKS`."""
    operations = {
        operation["operationId"]: operation
        for item in result.get("paths", {}).values()
        for operation in item.values()
        if isinstance(operation, dict) and "operationId" in operation
    }
    for source, (status, pointer, links) in CREATED_LINKS.items():
        response = operations[source]["responses"][status]
        response["links"] = {
            name: {
                "operationId": target,
                "parameters": {"id": f"$response.body#{pointer}"},
                "description": f"The object just made, by `{target}`.",
            }
            for name, target in links.items()
            if target in operations
        }
    return result
