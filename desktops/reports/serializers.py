"""The usage report's query (for the API and the page alike) and its answers."""

from __future__ import annotations

from rest_framework import serializers

from desktops.reports.selectors import UsageBy
from isard.core.api.serializers import id_field


class UsageQuerySerializer(serializers.Serializer):
    since = serializers.DateField(
        required=False,
        help_text="First day (local time), default 29 days before `until`; from 2000-01-01, "
        "and at most ISARD_USAGE_MAX_DAYS (400) days before `until`.",
    )
    until = serializers.DateField(
        required=False, help_text="Last day, included; default today; at most a year ahead."
    )
    by = serializers.ChoiceField(
        choices=UsageBy.choices, required=False, default=UsageBy.COURSE, help_text="Totals per."
    )
    course = id_field(required=False, help_text="Only this course's desktops.")
    school = id_field(required=False, help_text="Only this school's desktops.")


class UsageTotalSerializer(serializers.Serializer):
    id = serializers.IntegerField(allow_null=True)
    name = serializers.CharField()
    hours = serializers.FloatField()


class UsageDaySerializer(serializers.Serializer):
    date = serializers.DateField()
    hours = serializers.FloatField()


class UsageWeekHourSerializer(serializers.Serializer):
    weekday = serializers.IntegerField(help_text="0 is Monday.")
    hour = serializers.IntegerField()
    desktops = serializers.FloatField(help_text="Desktops running on average then.")


class UsageReportSerializer(serializers.Serializer):
    since = serializers.DateField()
    until = serializers.DateField()
    by = serializers.CharField()
    total_hours = serializers.FloatField()
    summed_until = serializers.DateTimeField(
        help_text="Hours before this come from the summed rows, later ones from the events."
    )
    totals = UsageTotalSerializer(many=True)
    days = UsageDaySerializer(many=True)
    week = UsageWeekHourSerializer(many=True)


class HostLoadPointSerializer(serializers.Serializer):
    at = serializers.DateTimeField()
    cpu_load = serializers.FloatField(help_text="Share of the CPUs busy, 0 to 1.")
    memory_used = serializers.FloatField(help_text="Share of the memory in use, 0 to 1.")
    running_domains = serializers.FloatField()


class HostLoadSeriesSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    points = HostLoadPointSerializer(many=True)


class HostLoadReportSerializer(serializers.Serializer):
    since = serializers.DateField()
    until = serializers.DateField()
    hosts = HostLoadSeriesSerializer(many=True)
