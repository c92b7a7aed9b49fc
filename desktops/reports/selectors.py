"""Usage reports: who ran desktops how long, when in the week, and the hosts' load.

Hours come from the `UsageHour` rows for what the rollup has summed and from the event
rows since, so a report is right to the minute. Each person sees what the one policy
(`accounts.permissions`) lets them manage: an administrator everything, a school
manager their school, a teacher the courses they teach (and their own desktops); a
student has no usage report (404, like any page that is not theirs).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q, Sum
from django.utils import timezone

from accounts.models import Course, School, User
from accounts.permissions import (
    courses_taught_by,
    is_manager,
    is_teacher,
    schools_visible_to,
)
from desktops.models import UsageHour
from desktops.reports.hours import DesktopHours, desktops_hours, usage_desktops
from desktops.reports.rollup import usage_until
from desktops.reports.segments import HOUR
from hypervisors.models import HostLoadSample, Hypervisor
from isard.core.errors import ApplicationError, NotFoundError
from templates_app.models import Template


class UsageBy(models.TextChoices):
    STUDENT = "student", "Student"
    COURSE = "course", "Course"
    TEMPLATE = "template", "Template"
    SCHOOL = "school", "School"


#: The field of `UsageHour` (and of `DesktopHours`, with `_id`) each grouping uses.
BY_FIELD: dict[str, str] = {
    UsageBy.STUDENT: "owner",
    UsageBy.COURSE: "course",
    UsageBy.TEMPLATE: "template",
    UsageBy.SCHOOL: "school",
}
#: What a row with no such thing (a purged person, a desktop outside any course) is called.
NONE_NAMES: dict[str, str] = {
    UsageBy.STUDENT: "(removed)",
    UsageBy.COURSE: "(no course)",
    UsageBy.TEMPLATE: "(no template)",
    UsageBy.SCHOOL: "(no school)",
}
EARLIEST = date(2000, 1, 1)
#: The host load chart draws at most about this many points per host.
HOST_POINTS = 400


def usage_scope(actor: User) -> Q | None:
    """The usage the person may see, as a `Q` over `UsageHour` (and `usage_desktops()`);
    None: none at all."""
    if not actor.is_active:
        return None
    if actor.is_admin:
        return Q()
    if is_manager(actor):
        return Q(owner=actor) | Q(school=actor.school_id)
    if is_teacher(actor):
        return Q(owner=actor) | Q(course__in=courses_taught_by(actor).values("pk"))
    return None


def sees_usage(actor: User) -> bool:
    return usage_scope(actor) is not None


def sees_host_load(actor: User) -> bool:
    """The hosts are the administrators' (and, to read, the school managers')."""
    return actor.is_active and (actor.is_admin or is_manager(actor))


@dataclass(frozen=True)
class UsageQuery:
    since: date
    until: date  # the last day, included
    by: str
    course_id: int | None
    school_id: int | None

    @property
    def days(self) -> int:
        return (self.until - self.since).days + 1


def _bad(field: str, message: str) -> ApplicationError:
    return ApplicationError(message, extra={"fields": {field: [message]}})


def _dates(since: date | None, until: date | None, today: date) -> tuple[date, date]:
    latest = today + timedelta(days=366)
    until = until or today
    since = since or until - timedelta(days=29)
    for field, day in (("until", until), ("since", since)):
        if not EARLIEST <= day <= latest:
            raise _bad(field, f"Give a day between {EARLIEST} and {latest}.")
    if since > until:
        raise _bad("since", "The first day comes after the last.")
    most = settings.ISARD_USAGE_MAX_DAYS
    if (until - since).days + 1 > most:
        raise _bad("since", f"A report covers at most {most} days.")
    return since, until


def usage_query(
    actor: User,
    *,
    since: date | None = None,
    until: date | None = None,
    by: str = UsageBy.COURSE,
    course_id: int | None = None,
    school_id: int | None = None,
    today: date | None = None,
) -> tuple[UsageQuery, Q]:
    """Check what the person asks for; the query and the scope to read it with.

    A course or school the person may not see is "not found", like a course id that
    does not exist."""
    scope = usage_scope(actor)
    if scope is None:
        raise NotFoundError("Not found.")
    if by not in BY_FIELD:
        raise _bad("by", f"Group by one of: {', '.join(BY_FIELD)}.")
    since, until = _dates(since, until, today or timezone.localdate())
    if course_id is not None:
        if not courses_taught_by(actor).filter(pk=course_id).exists():
            raise NotFoundError("No such course.")
        scope &= Q(course=course_id)
    if school_id is not None:
        if not schools_visible_to(actor).filter(pk=school_id).exists():
            raise NotFoundError("No such school.")
        scope &= Q(school=school_id)
    query = UsageQuery(since=since, until=until, by=by, course_id=course_id, school_id=school_id)
    return query, scope


@dataclass(frozen=True)
class UsageTotal:
    id: int | None
    name: str
    hours: float


@dataclass(frozen=True)
class UsageReport:
    query: UsageQuery
    total_hours: float
    totals: list[UsageTotal]
    #: Every day of the range (local time) with its desktop hours.
    days: list[tuple[date, float]]
    #: [weekday, Monday first][hour of the day]: desktops running on average then.
    week: list[list[float]]
    summed_until: datetime


def _span(query: UsageQuery) -> tuple[datetime, datetime]:
    """The range in local days, as instants."""
    start = timezone.make_aware(datetime.combine(query.since, time.min))
    end = timezone.make_aware(datetime.combine(query.until + timedelta(days=1), time.min))
    return start, end


def _names(by: str, keys: Iterable[int]) -> dict[int, str]:
    ids = list(keys)
    if by == UsageBy.STUDENT:
        return {
            pk: f"{full} ({username})".strip() if full.strip() else username
            for pk, username, full in (
                User.objects.filter(pk__in=ids)
                .annotate(
                    full=models.functions.Concat("first_name", models.Value(" "), "last_name")
                )
                .values_list("pk", "username", "full")
            )
        }
    models_by: dict[str, type[models.Model]] = {
        UsageBy.COURSE: Course,
        UsageBy.TEMPLATE: Template,
        UsageBy.SCHOOL: School,
    }
    model = models_by[by]
    return dict(model._default_manager.filter(pk__in=ids).values_list("pk", "name"))


def _key(found: DesktopHours, by: str) -> int | None:
    value: int | None = getattr(found, f"{BY_FIELD[by]}_id")
    return value


def usage_report(query: UsageQuery, scope: Q, *, now: datetime | None = None) -> UsageReport:
    """The hours of the query's range, grouped as it asks, per day and per hour of the week."""
    now = now or timezone.now()
    start, end = _span(query)
    summed_until = usage_until(now=now)
    stored = UsageHour.objects.filter(scope, hour__gte=start, hour__lt=end).order_by()
    live_start, live_end = max(start, summed_until), min(end, now)
    live = (
        desktops_hours(start=live_start, end=live_end, desktops=usage_desktops().filter(scope))
        if live_start < live_end
        else []
    )
    per_hour: dict[datetime, int] = defaultdict(int)
    for hour, seconds in (
        stored.values("hour").annotate(total=Sum("seconds")).values_list("hour", "total")
    ):
        per_hour[hour] += seconds
    field = BY_FIELD[query.by]
    per_key: dict[int | None, int] = defaultdict(int)
    for key, seconds in (
        stored.values(field).annotate(total=Sum("seconds")).values_list(field, "total")
    ):
        per_key[key] += seconds
    for found in live:
        for hour, seconds in found.seconds.items():
            per_hour[hour] += seconds
        per_key[_key(found, query.by)] += sum(found.seconds.values())
    names = _names(query.by, [key for key in per_key if key is not None])
    unnamed = NONE_NAMES[query.by]
    totals = sorted(
        (
            UsageTotal(
                id=key,
                name=names.get(key, unnamed) if key is not None else unnamed,
                hours=round(seconds / 3600, 2),
            )
            for key, seconds in per_key.items()
        ),
        key=lambda total: (-total.hours, total.name),
    )
    return UsageReport(
        query=query,
        total_hours=round(sum(per_hour.values()) / 3600, 2),
        totals=totals,
        days=_per_day(query, per_hour),
        week=_per_week_hour(per_hour, start=start, end=min(end, now)),
        summed_until=summed_until,
    )


def _per_day(query: UsageQuery, per_hour: dict[datetime, int]) -> list[tuple[date, float]]:
    seconds: dict[date, int] = defaultdict(int)
    for hour, total in per_hour.items():
        seconds[timezone.localtime(hour).date()] += total
    return [
        (day, round(seconds.get(day, 0) / 3600, 2))
        for day in (query.since + timedelta(days=n) for n in range(query.days))
    ]


def _per_week_hour(
    per_hour: dict[datetime, int], *, start: datetime, end: datetime
) -> list[list[float]]:
    """Desktops running on average in each hour of the week (its seconds over the times
    that hour of the week came round in the range)."""
    seconds = [[0] * 24 for _ in range(7)]
    times = [[0] * 24 for _ in range(7)]
    for hour, total in per_hour.items():
        local = timezone.localtime(hour)
        seconds[local.weekday()][local.hour] += total
    hour = start
    while hour < end:
        local = timezone.localtime(hour)
        times[local.weekday()][local.hour] += 1
        hour += HOUR
    return [
        [round(seconds[d][h] / 3600 / times[d][h], 2) if times[d][h] else 0.0 for h in range(24)]
        for d in range(7)
    ]


# --- the hosts' load -----------------------------------------------------------------------


@dataclass(frozen=True)
class HostLoadPoint:
    at: datetime
    cpu_load: float  # share of the CPUs busy, 0..1
    memory_used: float  # share of the memory in use, 0..1
    running_domains: float


@dataclass(frozen=True)
class HostLoadSeries:
    id: int
    name: str
    points: list[HostLoadPoint]


def host_load(actor: User, query: UsageQuery) -> list[HostLoadSeries]:
    """Each host's load over the range, averaged into at most `HOST_POINTS` points."""
    if not sees_host_load(actor):
        raise NotFoundError("Not found.")
    start, end = _span(query)
    step = max(
        settings.ISARD_HOST_LOAD_SAMPLE_SECONDS,
        math.ceil((end - start).total_seconds() / HOST_POINTS),
    )
    epoch = start.timestamp()
    series = []
    for hypervisor in Hypervisor.objects.order_by("name", "pk"):
        samples = HostLoadSample.objects.filter(hypervisor=hypervisor, at__gte=start, at__lt=end)
        if not samples.exists():
            continue
        buckets: dict[int, list[HostLoadSample]] = defaultdict(list)
        for sample in samples.order_by("at"):
            buckets[int((sample.at.timestamp() - epoch) // step)].append(sample)
        points = [
            HostLoadPoint(
                at=datetime.fromtimestamp(epoch + bucket * step, tz=start.tzinfo),
                cpu_load=sum(s.cpu_load for s in rows) / len(rows),
                memory_used=sum(
                    max(s.memory_mib - s.free_memory_mib, 0) / s.memory_mib if s.memory_mib else 0.0
                    for s in rows
                )
                / len(rows),
                running_domains=sum(s.running_domains for s in rows) / len(rows),
            )
            for bucket, rows in sorted(buckets.items())
        ]
        series.append(HostLoadSeries(id=hypervisor.pk, name=hypervisor.name, points=points))
    return series
