"""The pages' links lead to the pages: the API's router names its routes too."""

from __future__ import annotations

from django.test import Client
from django.urls import URLPattern, reverse
from django.urls.converters import IntConverter
from django.urls.resolvers import RoutePattern

from isard.urls import urlpatterns


def test_every_page_name_reverses_to_the_page_not_to_an_api_route() -> None:
    """DRF's router names routes "<basename>-list" and "-detail" in the same namespace as
    the pages, and `reverse` takes the first route of that name that fits the arguments:
    "My courses" once led a teacher into the API's JSON."""
    checked = []
    for pattern in urlpatterns:
        if not (isinstance(pattern, URLPattern) and pattern.name):
            continue
        if not isinstance(pattern.pattern, RoutePattern):
            continue  # a regex route (desktop actions) has no name the API shares
        converters = pattern.pattern.converters.values()
        args = [1 if isinstance(c, IntConverter) else "x" for c in converters]
        path = reverse(pattern.name, args=args)
        assert not path.startswith("/api/"), f"{pattern.name} leads to {path}"
        checked.append(pattern.name)
    assert {"dashboard", "course-page-list", "course-page", "template-page-list"} <= set(checked)


def test_an_api_path_with_a_newline_gets_the_apis_own_not_found(db: None) -> None:
    response = Client().get("/api/v1/desktops/1%0A/")
    assert response.status_code == 404
    assert response.json() == {
        "message": "No API endpoint at /api/v1/desktops/1\n/.",
        "extra": {},
    }
