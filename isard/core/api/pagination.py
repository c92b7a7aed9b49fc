"""Page-number pagination: `?page=2&page_size=100`."""

from __future__ import annotations

from typing import Any

from django.core.paginator import Page, PageNotAnInteger
from django.core.paginator import Paginator as DjangoPaginator
from rest_framework import pagination


class FirstPageCountingPaginator(DjangoPaginator):
    """Django's paginator, without the COUNT query when the first page is not full.

    Most lists are polled (a student's desktops, every few seconds) and fit on their
    first page: a first page shorter than the page size holds every object, so its length
    is the count. Other pages, and a full first page, count as Django does.
    """

    def page(self, number: Any) -> Page:
        if self.orphans or not self.allow_empty_first_page or "count" in self.__dict__:
            return super().page(number)
        try:
            if isinstance(number, float) and not number.is_integer():
                raise ValueError
            number = int(number)
        except (TypeError, ValueError) as error:
            raise PageNotAnInteger(self.error_messages["invalid_page"]) from error
        if number != 1:
            return super().page(number)
        objects = list(self.object_list[: self.per_page])
        if len(objects) < self.per_page:
            self.__dict__["count"] = len(objects)  # the cached_property's value
        return Page(objects, number, self)


class PageNumberPagination(pagination.PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500
    django_paginator_class = FirstPageCountingPaginator
