"""Page-number pagination: `?page=2&page_size=100`.

Both are whole numbers, given once, within the bounds the schema publishes: anything
else is a 400 naming the parameter, as for any other bad input. (DRF's own would quietly
use the default page size for `page_size=abc`, clamp `page_size=100000` and read
`page=1.0`: a client's mistake answered as if it were right, and a contract that said
something else.)
"""

from __future__ import annotations

from typing import Any

from django.core.paginator import Page, PageNotAnInteger
from django.core.paginator import Paginator as DjangoPaginator
from rest_framework import pagination
from rest_framework.request import Request

from isard.core.api.parameters import query_whole_number


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
    last_page_strings = ("last",)
    #: The largest page number asked for: past the last page is a 404, past this a 400.
    max_page = 2**31 - 1

    def get_page_size(self, request: Request) -> int:
        size = query_whole_number(request, self.page_size_query_param, maximum=self.max_page_size)
        return self.page_size if size is None else size

    def get_page_number(self, request: Request, paginator: DjangoPaginator) -> int:
        if request.query_params.getlist(self.page_query_param) == ["last"]:
            return paginator.num_pages
        number = query_whole_number(request, self.page_query_param, maximum=self.max_page)
        return 1 if number is None else number

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters: list[dict[str, Any]] = super().get_schema_operation_parameters(view)
        bounds = {
            self.page_query_param: (self.max_page, "`last` for the last; past it: 404."),
            self.page_size_query_param: (self.max_page_size, f"{self.page_size} if not given."),
        }
        for parameter in parameters:
            maximum, note = bounds[parameter["name"]]
            parameter["schema"].update(minimum=1, maximum=maximum)
            parameter["description"] = f"{parameter['description']} {note}"
            if parameter["name"] == self.page_query_param:
                last = {"type": "string", "enum": list(self.last_page_strings)}
                parameter["schema"] = {"oneOf": [parameter["schema"], last]}
        return parameters
