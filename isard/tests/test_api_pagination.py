"""Pagination: the same pages as Django's paginator, without a COUNT for a short first page."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.paginator import InvalidPage
from django.core.paginator import Paginator as DjangoPaginator
from django.db import connection
from django.test.utils import CaptureQueriesContext

from desktops.models import Desktop
from isard.core.api.pagination import FirstPageCountingPaginator
from tests.campus import Campus, assert_error, client_for


def outcome(paginator: DjangoPaginator, number: Any) -> Any:
    try:
        page = paginator.page(number)
    except InvalidPage as error:
        return type(error).__name__
    return (
        list(page),
        page.number,
        paginator.count,
        paginator.num_pages,
        page.has_next(),
        page.has_previous(),
    )


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 7])
@pytest.mark.parametrize("per_page", [1, 2, 3, 4])
def test_every_page_is_the_one_djangos_paginator_gives(size: int, per_page: int) -> None:
    objects = list(range(size))
    for number in (1, "1", 1.0, 2, "2", 3, 9, 0, -1, "x", 1.5, None, "1.0"):
        ours = outcome(FirstPageCountingPaginator(objects, per_page), number)
        assert ours == outcome(DjangoPaginator(objects, per_page), number), (number, ours)


def count_queries(captured: CaptureQueriesContext) -> int:
    return sum("COUNT(" in query["sql"].upper() for query in captured.captured_queries)


@pytest.mark.django_db
@pytest.mark.usefixtures("clean_throttles")
def test_a_short_first_page_is_counted_without_a_count_query(north: Campus) -> None:
    for number in range(2):
        Desktop.objects.create(
            name=f"more {number}",
            owner=north.student,
            course=north.course,
            hardware=north.hardware,
        )
    client = client_for(north.student)
    with CaptureQueriesContext(connection) as captured:
        body = client.get("/api/v1/desktops/?page_size=5").json()
    assert (body["count"], len(body["results"]), body["next"]) == (3, 3, None)
    assert count_queries(captured) == 0

    with CaptureQueriesContext(connection) as captured:
        body = client.get("/api/v1/desktops/?page_size=3").json()
    assert (body["count"], len(body["results"]), body["next"]) == (3, 3, None)
    assert count_queries(captured) == 1  # a full page: there may be more

    first = client.get("/api/v1/desktops/?page_size=2").json()
    assert (first["count"], len(first["results"]), first["previous"]) == (3, 2, None)
    second = client.get(first["next"]).json()
    assert (second["count"], len(second["results"]), second["next"]) == (3, 1, None)
    last = client.get("/api/v1/desktops/?page_size=2&page=last").json()
    assert last["results"] == second["results"]
    assert_error(client.get("/api/v1/desktops/?page_size=2&page=3"), 404)
    # Not a page number at all: bad input, as the schema says (isard/tests/test_api_contract).
    for page in ("0", "x", "1.5"):
        assert_error(client.get(f"/api/v1/desktops/?page_size=2&page={page}"), 400)
