"""Names with control characters are refused everywhere; logs escape what reaches them."""

from __future__ import annotations

import io
import logging
from typing import Any

import jsonschema_rs
import pytest
from django.core.exceptions import ValidationError

from accounts.models import Course, School
from desktops.models import Desktop, DesktopEvent
from desktops.services.provisioning import desktop_create
from isard.core.errors import ApplicationError
from isard.core.logs import EscapingFormatter, log_escape
from isard.core.text import (
    NAME_PATTERN,
    TEXT_PATTERN,
    control_characters,
    validate_name,
    validate_text,
)
from tests.campus import Campus, assert_error, client_for

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("clean_throttles")]

HOSTILE = ["bell\u0007esc\u001b[31mred", "line1\nline2", "nul\x00", "rtl\u202egpj.exe", "\ud800"]


def test_control_characters_are_named_by_code_point() -> None:
    assert control_characters("bell\u0007esc\u001b[31mred\u0007") == ["U+0007", "U+001B"]
    assert control_characters("Aula 1·B — ñandú 数学 🙂") == []
    assert control_characters("two\nlines\tand a tab", allow_whitespace=True) == []
    assert control_characters("del\x7f c1\x85", allow_whitespace=True) == ["U+007F", "U+0085"]


@pytest.mark.parametrize("name", HOSTILE)
def test_every_hostile_name_is_refused_by_the_validators(name: str) -> None:
    with pytest.raises(ValidationError):
        validate_name(name)
    if "\n" not in name:
        with pytest.raises(ValidationError):
            validate_text(name)
    validate_text("A description\nover two lines")


def test_models_refuse_them_so_the_admins_forms_do(north: Campus) -> None:
    course = Course(school=north.school, name="1A\u001b[2J")
    with pytest.raises(ValidationError) as refused:
        course.full_clean()
    assert "name" in refused.value.message_dict
    with pytest.raises(ValidationError):
        School(name="x\ny", slug="xy").full_clean()


@pytest.mark.parametrize("name", HOSTILE[:4])
def test_the_api_refuses_them_with_the_field_and_creates_nothing(
    north: Campus, base_template: Any, name: str
) -> None:
    client = client_for(north.teacher)
    before = Desktop.objects.count()
    body = assert_error(
        client.post("/api/v1/desktops/", {"template": base_template.pk, "name": name}, "json"),
        400,
    )
    assert "control characters" in str(body["extra"]["fields"]["name"])
    deployment = {"name": name, "course": north.course.pk, "template": base_template.pk}
    body = assert_error(client.post("/api/v1/deployments/", deployment, "json"), 400)
    assert "name" in body["extra"]["fields"]
    described = {"name": "ok", "template": base_template.pk, "description": "a\u0007"}
    body = assert_error(client.post("/api/v1/desktops/", described, "json"), 400)
    assert "description" in body["extra"]["fields"]
    assert Desktop.objects.count() == before


def test_the_services_refuse_them_whoever_calls(north: Campus, base_template: Any) -> None:
    with pytest.raises(ApplicationError) as refused:
        desktop_create(actor=north.student, template=base_template, name="a\u0007b")
    assert refused.value.extra["fields"]["name"]
    assert not DesktopEvent.objects.filter(desktop__name="a\u0007b").exists()


def test_log_lines_escape_what_people_typed() -> None:
    assert log_escape("ana\nFAKE admin signed in\u001b[31m") == (
        "ana\\nFAKE admin signed in\\x1b[31m"
    )
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(EscapingFormatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("isard.tests.text")
    logger.addHandler(handler)
    try:
        logger.warning("sign-in refused for %s", "student3\nINFO admin signed in")
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == "WARNING sign-in refused for student3\\nINFO admin signed in\n"


def test_the_platforms_log_configuration_escapes() -> None:
    root_formatters = {type(handler.formatter) for handler in logging.getLogger().handlers}
    assert EscapingFormatter in root_formatters


def test_the_published_patterns_refuse_exactly_what_the_validators_refuse() -> None:
    # Read as JSON Schema reads them (ECMA-262: `$` is the end, not a final newline).
    name = jsonschema_rs.validator_for({"type": "string", "pattern": NAME_PATTERN})
    text = jsonschema_rs.validator_for({"type": "string", "pattern": TEXT_PATTERN})
    for code in range(0x110000):
        if 0xD800 <= code <= 0xDFFF:
            continue  # no JSON text carries a lone surrogate
        char = chr(code)
        for value in (char, f"a{char}"):
            assert name.is_valid(value) == (not control_characters(value)), hex(code)
            assert text.is_valid(value) == (not control_characters(value, allow_whitespace=True)), (
                hex(code)
            )
