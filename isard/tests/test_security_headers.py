"""Content-Security-Policy and Permissions-Policy on the pages, and what the policy allows."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse

from desktops.choices import DesktopStatus
from desktops.models import Desktop
from hypervisors.tests.factories import HypervisorFactory
from isard.middleware import PAGE_EXCEPTIONS
from tests.campus import Campus

ROOT = Path(settings.BASE_DIR)


def directives(response: Any) -> dict[str, list[str]]:
    policy = response["Content-Security-Policy"]
    return {
        name: sources
        for name, *sources in (part.split() for part in policy.split(";") if part.strip())
    }


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_a_page_forbids_inline_script_and_other_origins(north: Campus) -> None:
    response = signed_in(north.student).get("/")
    assert response.status_code == 200
    policy = directives(response)
    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"]
    assert policy["object-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"]
    # The live status websocket goes to the page's own host, with the page's scheme.
    assert policy["connect-src"] == ["'self'", "ws://testserver"]
    assert "camera=()" in response["Permissions-Policy"]
    assert "fullscreen=(self)" in response["Permissions-Policy"]


def test_over_https_websockets_are_wss_and_hsts_is_sent_when_configured(
    north: Campus, settings: Any
) -> None:
    settings.SECURE_HSTS_SECONDS = 31536000
    response = signed_in(north.student).get("/", secure=True)
    assert directives(response)["connect-src"] == ["'self'", "wss://testserver"]
    assert response["Strict-Transport-Security"].startswith("max-age=31536000")
    assert "Strict-Transport-Security" not in signed_in(north.student).get("/")


def test_the_sign_in_page_and_error_answers_carry_the_policy(db: None) -> None:
    for path in (reverse("accounts:sign-in"), "/no-such-page/", "/api/v1/nothing/"):
        response = Client().get(path)
        assert directives(response)["script-src"] == ["'self'"], path
        assert "Permissions-Policy" in response, path


def test_the_viewer_page_runs_under_the_strict_policy(north: Campus) -> None:
    Desktop.objects.filter(pk=north.student_desktop.pk).update(
        status=DesktopStatus.STARTED, hypervisor=HypervisorFactory.create()
    )
    url = reverse("desktop-viewer", args=[north.student_desktop.pk])
    viewer = signed_in(north.student).get(url)
    assert viewer.status_code == 200
    assert '<script type="module" src="/static/isard/viewer.js">' in viewer.content.decode()
    assert directives(viewer)["script-src"] == ["'self'"]
    assert directives(viewer)["style-src"] == ["'self'"]
    assert directives(viewer)["connect-src"] == ["'self'", "ws://testserver"]


@pytest.mark.parametrize("name", ["api-docs", "api-redoc"])
def test_the_api_documentation_loads_its_scripts_from_files(db: None, name: str) -> None:
    response = Client().get(reverse(name))
    assert response.status_code == 200
    body = response.content.decode()
    inline = [tag for tag in re.findall(r"<script\b[^>]*>", body) if "src=" not in tag]
    assert inline == [], inline
    assert directives(response)["script-src"] == ["'self'"]


# Inline code in a template: a <script> without src, a <style> element, a style="" or
# on...="" attribute. The policy blocks each of them except on the pages named here.
INLINE = re.compile(r"<script\b(?![^>]*\bsrc=)[^>]*>|<style\b|\sstyle=|\son[a-z]+=", re.IGNORECASE)
ALLOWED_INLINE: dict[str, str] = {}


def test_templates_carry_no_inline_code_outside_the_pages_excepted_from_the_policy() -> None:
    offenders = {}
    for template in ROOT.glob("*/templates/**/*.html"):
        if ".venv" in template.parts:
            continue
        found = INLINE.findall(template.read_text())
        if found:
            offenders[str(template.relative_to(ROOT))] = found
    # isard's ReDoc page keeps drf-spectacular's one-line <style> (the page is excepted).
    offenders.pop("isard/templates/api/redoc.html", None)
    assert set(offenders) <= set(ALLOWED_INLINE), offenders
    for page in ALLOWED_INLINE.values():
        assert page in PAGE_EXCEPTIONS
