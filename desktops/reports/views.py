"""The usage page in the admin (charts, tables, CSV) for administrators, school managers
and teachers, each seeing what they manage. Thin: `desktops.reports.selectors`."""

from __future__ import annotations

import csv
import io
from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode
from rest_framework.exceptions import ValidationError

from accounts.admin_scope import request_actor
from accounts.models import User
from accounts.permissions import courses_taught_by, schools_visible_to
from desktops.reports.api import query_from
from desktops.reports.charts import (
    WEEKDAYS,
    busiest_times_chart,
    host_load_chart,
    hours_per_day_chart,
)
from desktops.reports.selectors import (
    UsageBy,
    UsageQuery,
    UsageReport,
    host_load,
    sees_host_load,
    usage_report,
)
from isard.core.errors import ApplicationError, NotFoundError
from isard.core.text import csv_cell

CSV_TABLES = ("totals", "days", "week", "hosts")
FORM_FIELDS = ("since", "until", "by", "course", "school")


def _actor(request: HttpRequest) -> User:
    actor = request_actor(request)
    assert actor is not None  # the admin site let only its users in
    return actor


def _errors(error: Exception) -> list[str]:
    if isinstance(error, ValidationError):
        detail = error.detail if isinstance(error.detail, dict) else {"": error.detail}
        return [f"{field}: {message}" for field, messages in detail.items() for message in messages]
    assert isinstance(error, ApplicationError)
    return [error.message]


def _not_found(request: HttpRequest) -> HttpResponse:
    return TemplateResponse(
        request,
        "admin/usage.html",
        {**admin.site.each_context(request), "title": "Usage", "not_found": True},
        status=404,
    )


def _query_params(query: UsageQuery) -> dict[str, Any]:
    params: dict[str, Any] = {
        "since": query.since.isoformat(),
        "until": query.until.isoformat(),
        "by": query.by,
    }
    if query.course_id is not None:
        params["course"] = query.course_id
    if query.school_id is not None:
        params["school"] = query.school_id
    return params


def usage_page(request: HttpRequest) -> HttpResponse:
    """Hours per day, the busiest times of the week, totals, and (for administrators and
    managers) the hosts' load over the same days."""
    actor = _actor(request)
    context: dict[str, Any] = {
        **admin.site.each_context(request),
        "title": "Usage",
        "by_choices": UsageBy.choices,
        "courses": courses_taught_by(actor).order_by("name"),
        "schools": schools_visible_to(actor).order_by("name") if actor.is_admin else [],
        # What the form shows: what was asked, until it is understood.
        "form": {name: request.GET.get(name, "") for name in FORM_FIELDS},
    }
    try:
        query, scope = query_from(actor, request.GET)
    except NotFoundError:
        return _not_found(request)
    except (ValidationError, ApplicationError) as error:
        context["errors"] = _errors(error)
        return TemplateResponse(request, "admin/usage.html", context, status=400)
    report = usage_report(query, scope)
    context["form"] = {
        "since": query.since.isoformat(),
        "until": query.until.isoformat(),
        "by": query.by,
        "course": str(query.course_id or ""),
        "school": str(query.school_id or ""),
    }
    csv_base = reverse("admin-usage-csv") + "?" + urlencode(_query_params(query))
    context.update(
        query=query,
        report=report,
        by_label=UsageBy(query.by).label,
        totals=report.totals[:100],
        more_totals=max(len(report.totals) - 100, 0),
        per_day_chart=hours_per_day_chart(report.days),
        week_chart=busiest_times_chart(report.week),
        csv_links=[
            ("totals", f"Totals per {UsageBy(query.by).label.lower()}"),
            ("days", "Hours per day"),
            ("week", "Busiest times"),
        ],
        csv_base=csv_base,
        summed_until=timezone.localtime(report.summed_until),
    )
    if sees_host_load(actor):
        series = host_load(actor, query)
        context.update(
            hosts=series,
            cpu_chart=host_load_chart(series, measure="cpu_load"),
            memory_chart=host_load_chart(series, measure="memory_used"),
        )
        context["csv_links"].append(("hosts", "Hosts' load"))
    return TemplateResponse(request, "admin/usage.html", context)


def _csv_rows(
    actor: User, table: str, query: UsageQuery, report: UsageReport
) -> tuple[list[str], list[list[Any]]]:
    if table == "totals":
        return [query.by, "name", "hours"], [
            ["" if t.id is None else t.id, csv_cell(t.name), t.hours] for t in report.totals
        ]
    if table == "days":
        return ["date", "hours"], [[day.isoformat(), hours] for day, hours in report.days]
    if table == "week":
        return ["weekday", "hour", "desktops on average"], [
            [WEEKDAYS[d], f"{h:02d}:00", value]
            for d, values in enumerate(report.week)
            for h, value in enumerate(values)
        ]
    return ["host", "at", "cpu %", "memory %", "running guests"], [
        [
            csv_cell(host.name),
            point.at.isoformat(),
            round(100 * point.cpu_load, 1),
            round(100 * point.memory_used, 1),
            round(point.running_domains, 1),
        ]
        for host in host_load(actor, query)
        for point in host.points
    ]


def usage_csv(request: HttpRequest) -> HttpResponse:
    """One of the page's tables as CSV (`table=totals|days|week|hosts`), for a spreadsheet:
    names that would run as formulas stay text."""
    actor = _actor(request)
    table = request.GET.get("table", "totals")
    try:
        if table not in CSV_TABLES:
            raise ApplicationError(f"table: one of {', '.join(CSV_TABLES)}.")
        query, scope = query_from(actor, request.GET)
        if table == "hosts" and not sees_host_load(actor):
            raise NotFoundError("Not found.")
        header, rows = _csv_rows(actor, table, query, usage_report(query, scope))
    except NotFoundError:
        return _not_found(request)
    except (ValidationError, ApplicationError) as error:
        return HttpResponse(
            "\n".join(_errors(error)) + "\n", status=400, content_type="text/plain; charset=utf-8"
        )
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    response = HttpResponse(out.getvalue(), content_type="text/csv; charset=utf-8")
    name = f"usage-{table}-{query.since.isoformat()}-{query.until.isoformat()}.csv"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response
