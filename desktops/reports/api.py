"""Usage in the API: the same numbers as the usage page. Thin: `desktops.reports.selectors`."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api.views import request_user
from accounts.models import User
from desktops.reports.selectors import (
    UsageQuery,
    UsageReport,
    host_load,
    usage_query,
    usage_report,
)
from desktops.reports.serializers import (
    HostLoadReportSerializer,
    UsageQuerySerializer,
    UsageReportSerializer,
)


def query_from(actor: User, params: Any) -> tuple[UsageQuery, Any]:
    """The query a request's parameters ask for, checked (400 or 404 otherwise)."""
    serializer = UsageQuerySerializer(data=params)
    serializer.is_valid(raise_exception=True)
    data = serializer.validated_data
    return usage_query(
        actor,
        since=data.get("since"),
        until=data.get("until"),
        by=data["by"],
        course_id=data.get("course"),
        school_id=data.get("school"),
    )


def report_body(report: UsageReport) -> dict[str, Any]:
    return {
        "since": report.query.since,
        "until": report.query.until,
        "by": report.query.by,
        "total_hours": report.total_hours,
        "summed_until": report.summed_until,
        "totals": [asdict(total) for total in report.totals],
        "days": [{"date": day, "hours": hours} for day, hours in report.days],
        "week": [
            {"weekday": weekday, "hour": hour, "desktops": value}
            for weekday, values in enumerate(report.week)
            for hour, value in enumerate(values)
        ],
    }


@extend_schema(tags=["usage"])
class UsageView(APIView):
    """Desktop hours per student, course, template or school, per day and per hour of
    the week: what you manage (administrators all, managers their school, teachers
    their courses and own desktops; students have none: 404)."""

    permission_classes = [IsAuthenticated]

    @extend_schema(parameters=[UsageQuerySerializer], responses={200: UsageReportSerializer})
    def get(self, request: Request) -> Response:
        query, scope = query_from(request_user(request), request.query_params)
        return Response(UsageReportSerializer(report_body(usage_report(query, scope))).data)


@extend_schema(tags=["usage"])
class HostLoadView(APIView):
    """Each host's CPU, memory and running guests over the range (administrators and
    school managers; the grouping and course parameters do not apply)."""

    permission_classes = [IsAuthenticated]

    @extend_schema(parameters=[UsageQuerySerializer], responses={200: HostLoadReportSerializer})
    def get(self, request: Request) -> Response:
        actor = request_user(request)
        query, _scope = query_from(actor, request.query_params)
        body = {
            "since": query.since,
            "until": query.until,
            "hosts": [asdict(series) for series in host_load(actor, query)],
        }
        return Response(HostLoadReportSerializer(body).data)
