"""What the schema says of the query parameters every list shares is what the code does.

Found by fuzzing the contract: `page_size` of null, "", a float or an array used to be
read as "the default", `course=0` was refused while the schema allowed it, and a filter
with no value was read as no filter.
"""

from __future__ import annotations

from typing import Any

import pytest

from isard.core.api.serializers import MAX_ID
from isard.core.text import NAME_PATTERN, NO_NUL_PATTERN, TEXT_PATTERN
from tests.campus import Campus, assert_error, client_for, ids

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("clean_throttles")]


def list_parameters(north: Campus, path: str) -> dict[str, Any]:
    schema = client_for(north.student).get("/api/v1/schema/?format=json").json()
    return {p["name"]: p["schema"] for p in schema["paths"][path]["get"]["parameters"]}


@pytest.mark.parametrize(
    "query",
    [
        "page_size=null",
        "page_size=",
        "page_size=1.5",
        "page_size=2.0",
        "page_size=1&page_size=2",
        "page_size=0",
        "page_size=-1",
        "page_size=501",
        "page_size=%C2%B2",
        "page=",
        "page=last&page=last",
        "page=first",
        "page=0",
        "page=1e3",
    ],
)
def test_a_page_or_page_size_that_is_not_a_whole_number_in_bounds_is_a_400(
    north: Campus, query: str
) -> None:
    response = client_for(north.teacher).get(f"/api/v1/desktops/?{query}")
    body = assert_error(response, 400)
    assert set(body["extra"]["fields"]) == {query.split("=")[0]}


def test_page_size_in_bounds_is_honoured_and_past_the_last_page_is_a_404(north: Campus) -> None:
    client = client_for(north.teacher)
    assert client.get("/api/v1/desktops/?page_size=500").status_code == 200
    assert len(client.get("/api/v1/courses/?page_size=1").json()["results"]) == 1
    assert_error(client.get("/api/v1/desktops/?page=99"), 404)


def test_the_schema_publishes_the_bounds_of_page_and_page_size(north: Campus) -> None:
    parameters = list_parameters(north, "/api/v1/desktops/")
    assert parameters["page_size"] == {"type": "integer", "minimum": 1, "maximum": 500}
    assert parameters["page"] == {
        "oneOf": [
            {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
            {"type": "string", "enum": ["last"]},
        ]
    }


def test_id_filters_are_bounded_in_the_schema_as_in_the_code(north: Campus) -> None:
    parameters = list_parameters(north, "/api/v1/desktops/")
    for name in ("course", "template", "owner", "deployment"):
        assert parameters[name] == {"type": "integer", "minimum": 1, "maximum": MAX_ID}, name
    client = client_for(north.teacher)
    assert_error(client.get("/api/v1/desktops/?course=0"), 400)
    assert client.get(f"/api/v1/desktops/?course={MAX_ID}").json()["results"] == []


@pytest.mark.parametrize("query", ["course=", "status=", "in_recycle_bin=", "course=1&course="])
def test_a_filter_given_no_value_is_a_400_not_no_filter(north: Campus, query: str) -> None:
    body = assert_error(client_for(north.teacher).get(f"/api/v1/desktops/?{query}"), 400)
    assert set(body["extra"]["fields"]) == {query.split("=")[0]}


def test_a_path_with_a_newline_under_the_api_gets_the_json_404(north: Campus) -> None:
    response = client_for(north.student).get("/api/v1/desktops/1%0A/")
    assert_error(response, 404)
    assert response["Content-Type"] == "application/json"


def test_a_multipart_body_without_a_boundary_gets_the_api_400(north: Campus) -> None:
    response = client_for(north.student).generic(
        "POST", "/api/v1/desktops/", "x", content_type="multipart/form-data"
    )
    assert_error(response, 400)


def test_names_and_descriptions_publish_the_characters_they_refuse(north: Campus) -> None:
    schema = client_for(north.student).get("/api/v1/schema/?format=json").json()
    desktop = schema["components"]["schemas"]["DesktopCreateRequest"]["properties"]
    assert desktop["name"]["pattern"] == NAME_PATTERN
    assert desktop["description"]["pattern"] == TEXT_PATTERN
    login = schema["components"]["schemas"]["LoginRequest"]["properties"]
    assert login["token_name"]["pattern"] == NAME_PATTERN


@pytest.mark.parametrize("course", ["", "-1", "0", "1.0", str(MAX_ID + 1)])
def test_the_usage_course_is_an_id_in_the_schemas_bounds_or_a_400(
    north: Campus, course: str
) -> None:
    client = client_for(north.student)
    body = assert_error(client.get(f"/api/v1/me/usage/?course={course}"), 400)
    assert set(body["extra"]["fields"]) == {"course"}
    assert client.get(f"/api/v1/me/usage/?course={north.course.pk}").status_code == 200
    schema = client.get("/api/v1/schema/?format=json").json()
    (parameter,) = schema["paths"]["/api/v1/me/usage/"]["get"]["parameters"]
    assert parameter["schema"] | {"format": "int64"} == {
        "type": "integer",
        "format": "int64",
        "minimum": 1,
        "maximum": MAX_ID,
    }


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/api/v1/desktops/", "in_recycle_bin"),
        ("/api/v1/templates/", "shared_with_everyone"),
        ("/api/v1/deployments/", "deleted"),
    ],
)
def test_a_boolean_filter_is_true_or_false_in_the_schema_and_the_code(
    north: Campus, path: str, name: str
) -> None:
    assert list_parameters(north, path)[name]["type"] == "boolean"
    client = client_for(north.teacher)
    for value in ("true", "false"):
        assert client.get(f"{path}?{name}={value}").status_code == 200
    for value in ("yes", "1", "True", "null"):
        body = assert_error(client.get(f"{path}?{name}={value}"), 400)
        assert set(body["extra"]["fields"]) == {name}


def test_in_recycle_bin_still_filters(north: Campus) -> None:
    client = client_for(north.student)
    assert ids(client.get("/api/v1/desktops/?in_recycle_bin=false")) == {north.student_desktop.pk}
    assert ids(client.get("/api/v1/desktops/?in_recycle_bin=true")) == set()


def test_other_text_publishes_that_it_refuses_nul(north: Campus) -> None:
    schema = client_for(north.student).get("/api/v1/schema/?format=json").json()
    login = schema["components"]["schemas"]["LoginRequest"]["properties"]
    assert login["username"]["pattern"] == NO_NUL_PATTERN
    assert_error(
        client_for(None).post("/api/v1/auth/login/", {"username": "a\0", "password": "x"}), 400
    )


def test_a_search_with_nul_is_a_400_naming_search_as_the_schema_says(north: Campus) -> None:
    body = assert_error(client_for(north.teacher).get("/api/v1/media/?search=a%00b"), 400)
    assert set(body["extra"]["fields"]) == {"search"}
    assert list_parameters(north, "/api/v1/media/")["search"]["pattern"] == NO_NUL_PATTERN


def test_a_create_links_to_the_operations_on_what_it_made(north: Campus) -> None:
    schema = client_for(north.student).get("/api/v1/schema/?format=json").json()
    operation_ids = {
        operation["operationId"] for item in schema["paths"].values() for operation in item.values()
    }
    desktop = schema["paths"]["/api/v1/desktops/"]["post"]["responses"]["202"]["links"]
    assert desktop["StartDesktop"] == {
        "operationId": "desktops_start_create",
        "parameters": {"id": "$response.body#/id"},
        "description": "The object just made, by `desktops_start_create`.",
    }
    deployment = schema["paths"]["/api/v1/deployments/"]["post"]["responses"]["202"]["links"]
    # Its answer is the deployment and what was made of it: the id is one level down.
    assert deployment["GetDeployment"]["parameters"] == {"id": "$response.body#/deployment/id"}
    for item in schema["paths"].values():
        for operation in item.values():
            for response in operation["responses"].values():
                for link in response.get("links", {}).values():
                    assert link["operationId"] in operation_ids
