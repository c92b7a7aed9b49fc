"""Usage: desktop hours from the event rows, summed hourly, scoped like everything else."""

from __future__ import annotations

import csv
import io
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from desktops.choices import DesktopStatus
from desktops.fleet.monitoring import hypervisor_record_sample
from desktops.models import Desktop, DesktopEvent, UsageHour, UsageRollup
from desktops.reports.hours import desktops_hours
from desktops.reports.rollup import usage_keep_purged, usage_rollup, usage_rollup_step
from desktops.reports.segments import running_spans, seconds_per_hour
from desktops.reports.selectors import usage_query, usage_report
from desktops.services.lifecycle import desktop_start, desktop_stop
from desktops.services.provisioning import desktop_create
from desktops.services.recycle_bin import desktop_purge
from hypervisors.drivers import libvirt_driver
from hypervisors.models import HostLoadSample
from hypervisors.services.load import host_load_prune
from isard.core.errors import ApplicationError, NotFoundError
from tests.campus import Campus, assert_error, client_for

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("clean_throttles")]

S = DesktopStatus


def at(hour: int, minute: int = 0, day: int = 2) -> datetime:
    """A moment on 2026-11-<day> (a Monday is the 2nd), UTC."""
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)


def event(desktop: Desktop, to: str, when: datetime) -> None:
    made = DesktopEvent.objects.create(desktop=desktop, from_status="", to_status=to)
    DesktopEvent.objects.filter(pk=made.pk).update(created_at=when)


def ran(desktop: Desktop, start: datetime, stop: datetime) -> None:
    event(desktop, S.STARTING, start - timedelta(seconds=5))
    event(desktop, S.STARTED, start)
    event(desktop, S.SHUTTING_DOWN, stop - timedelta(seconds=30))
    event(desktop, S.STOPPED, stop)


# --- the pure part ------------------------------------------------------------------------


def test_a_desktop_runs_from_started_until_stopped_and_events_in_between_change_nothing() -> None:
    changes = [
        (at(9, 25), S.STARTING),
        (at(9, 30), S.STARTED),
        (at(10, 0), S.STARTED),  # a look at its screen: an event, no change
        (at(11, 0), S.SHUTTING_DOWN),
        (at(11, 15), S.STOPPED),
        (at(12, 0), S.STARTED),
        (at(12, 10), S.UNKNOWN),  # the host went silent: nobody can tell
        (at(12, 40), S.STARTED),
    ]
    spans = running_spans(running_at_start=False, changes=changes, start=at(9), end=at(13))
    assert spans == [(at(9, 30), at(11, 15)), (at(12), at(12, 10)), (at(12, 40), at(13))]
    assert seconds_per_hour(spans) == {at(9): 1800, at(10): 3600, at(11): 900, at(12): 1800}


def test_a_desktop_running_at_the_start_counts_from_the_start() -> None:
    spans = running_spans(
        running_at_start=True, changes=[(at(10, 20), S.STOPPED)], start=at(10), end=at(11)
    )
    assert seconds_per_hour(spans) == {at(10): 1200}
    assert running_spans(running_at_start=True, changes=[], start=at(10), end=at(12)) == [
        (at(10), at(12))
    ]


# --- from the event rows ------------------------------------------------------------------------


def test_hours_are_read_from_the_events_and_a_desktop_started_long_ago_counts(
    north: Campus,
) -> None:
    ran(north.student_desktop, at(9, 30), at(11, 15))
    event(north.other_student_desktop, S.STARTED, at(8, day=1))  # the day before, still on
    found = {d.desktop_id: d for d in desktops_hours(start=at(9), end=at(12))}
    assert found[north.student_desktop.pk].seconds == {at(9): 1800, at(10): 3600, at(11): 900}
    assert found[north.other_student_desktop.pk].seconds == {
        at(9): 3600,
        at(10): 3600,
        at(11): 3600,
    }
    assert found[north.student_desktop.pk].school_id == north.school.pk
    assert found[north.student_desktop.pk].course_id == north.course.pk


def test_the_rollup_sums_each_finished_hour_once(north: Campus) -> None:
    ran(north.student_desktop, at(9, 30), at(11, 15))
    assert usage_rollup(now=at(12, 10)) == 3
    assert UsageRollup.objects.get().until == at(12)
    assert usage_rollup(now=at(12, 50)) == 0  # nothing new is over
    assert sorted(UsageHour.objects.values_list("hour", "seconds")) == [
        (at(9), 1800),
        (at(10), 3600),
        (at(11), 900),
    ]
    # A rollup that read where things stood before the first one moved it writes nothing.
    assert usage_rollup_step(start=at(9), end=at(12)) is None
    assert UsageHour.objects.count() == 3
    row = UsageHour.objects.get(hour=at(10))
    assert (row.owner, row.course, row.school, row.desktop_name) == (
        north.student,
        north.course,
        north.school,
        north.student_desktop.name,
    )


def test_the_first_rollup_of_a_long_history_goes_day_by_day_and_loses_nothing(
    north: Campus,
) -> None:
    event(north.student_desktop, S.STARTED, at(6, day=1))
    event(north.student_desktop, S.STOPPED, at(6, day=4))
    usage_rollup(now=at(12, 30, day=5))
    assert UsageRollup.objects.get().until == at(12, day=5)
    seconds = sum(UsageHour.objects.values_list("seconds", flat=True))
    assert seconds == 3 * 24 * 3600


def test_a_purged_desktop_keeps_its_hours_and_they_count_once(north: Campus) -> None:
    now = timezone.now().replace(microsecond=0)
    desktop = north.student_desktop
    ran(desktop, now - timedelta(hours=30), now - timedelta(hours=27))
    usage_rollup(now=now - timedelta(hours=28))  # sums part of the run, the rest is not over
    Desktop.objects.filter(pk=desktop.pk).update(status=S.DELETED, deleted_at=now)
    desktop.refresh_from_db()
    desktop_purge(desktop=desktop)
    assert not Desktop.objects.filter(pk=desktop.pk).exists()
    usage_rollup(now=now)
    rows = UsageHour.objects.filter(owner=north.student)
    assert sum(row.seconds for row in rows) == 3 * 3600
    assert {row.desktop_id for row in rows} == {None}  # the desktop is gone, its hours stay
    query, scope = usage_query(north.teacher, by="student")
    report = usage_report(query, scope)
    assert report.total_hours == 3.0
    assert [(t.name, t.hours) for t in report.totals] == [(north.student.username, 3.0)]


def test_keeping_a_purged_desktops_hours_twice_is_not_possible_without_its_events(
    north: Campus,
) -> None:
    desktop = north.student_desktop
    ran(desktop, at(9), at(10))
    usage_keep_purged(desktop=desktop, now=at(11))
    desktop.events.all().delete()
    usage_rollup(now=at(12, 10))
    assert sum(UsageHour.objects.values_list("seconds", flat=True)) == 3600


def test_a_report_reads_the_hours_not_summed_yet_from_the_events(north: Campus) -> None:
    now = timezone.now().replace(microsecond=0)
    event(north.student_desktop, S.STARTED, now - timedelta(minutes=90))
    query, scope = usage_query(north.teacher)
    report = usage_report(query, scope, now=now)
    assert report.total_hours == 1.5
    assert sum(hours for _day, hours in report.days) == 1.5


def test_the_busiest_times_are_desktops_running_on_average_per_hour_of_the_week(
    north: Campus, south: Campus
) -> None:
    # Two Mondays in the range; on the first, two desktops ran 09:00-10:00.
    ran(north.student_desktop, at(9), at(10))
    ran(north.other_student_desktop, at(9), at(10))
    usage_rollup(now=at(23, day=15))
    query, scope = usage_query(
        north.manager, since=date(2026, 11, 2), until=date(2026, 11, 15), by="course"
    )
    report = usage_report(query, scope, now=at(23, day=15))
    assert report.week[0][9] == 1.0  # 2 desktop hours over 2 Mondays
    assert report.week[0][10] == 0.0 and report.week[1][9] == 0.0
    assert report.days[0] == (date(2026, 11, 2), 2.0)
    assert len(report.days) == 14
    assert {(t.name, t.hours) for t in report.totals} == {
        (north.course.name, 1.0),
        (north.other_course.name, 1.0),
    }


def test_a_real_start_and_stop_on_a_hypervisor_count(
    run: Any, test_hypervisor: Any, base_template: Any, north: Campus
) -> None:
    desktop = run(desktop_create, actor=north.student, template=base_template, name="Counted")
    desktop.refresh_from_db()
    run(desktop_start, actor=north.student, desktop=desktop)
    desktop.refresh_from_db()
    assert desktop.status == S.STARTED
    started = desktop.events.get(to_status=S.STARTED).created_at
    time.sleep(1.5)  # hours count whole seconds: let it run a little
    run(desktop_stop, actor=north.student, desktop=desktop)
    desktop.refresh_from_db()
    assert desktop.status == S.STOPPED
    stopped = desktop.events.filter(to_status=S.STOPPED).latest("created_at").created_at
    found = desktops_hours(start=started - timedelta(hours=1), end=timezone.now())
    assert [d.desktop_id for d in found] == [desktop.pk]
    assert sum(found[0].seconds.values()) == round((stopped - started).total_seconds())


# --- who sees what --------------------------------------------------------------------------


@pytest.fixture
def hours(north: Campus, south: Campus) -> dict[str, Desktop]:
    """An hour on each of three desktops: north's two classes and south's first, a week ago."""
    base = timezone.now().replace(minute=0, second=0, microsecond=0) - timedelta(days=7)
    for n, desktop in enumerate(
        [north.student_desktop, north.other_student_desktop, south.student_desktop]
    ):
        ran(desktop, base + timedelta(hours=n), base + timedelta(hours=n + 1))
    usage_rollup()
    return {
        "north1": north.student_desktop,
        "north2": north.other_student_desktop,
        "south1": south.student_desktop,
    }


def courses_seen(user: User, **params: Any) -> dict[str, float]:
    response = client_for(user).get("/api/v1/usage/", {"by": "course", **params})
    assert response.status_code == 200, response.content
    return {total["name"]: total["hours"] for total in response.json()["totals"]}


def test_each_role_sees_the_usage_it_manages(
    hours: dict[str, Desktop], north: Campus, south: Campus, admin: User
) -> None:
    assert courses_seen(admin) == {"north 1A": 1.0, "north 1B": 1.0, "south 1A": 1.0}
    assert courses_seen(north.manager) == {"north 1A": 1.0, "north 1B": 1.0}
    assert courses_seen(south.manager) == {"south 1A": 1.0}
    assert courses_seen(north.teacher) == {"north 1A": 1.0}
    assert courses_seen(north.other_teacher) == {"north 1B": 1.0}
    assert courses_seen(admin, school=south.school.pk) == {"south 1A": 1.0}
    assert courses_seen(north.manager, course=north.other_course.pk) == {"north 1B": 1.0}


def test_a_student_and_anything_outside_ones_scope_is_not_found(
    hours: dict[str, Desktop], north: Campus, south: Campus
) -> None:
    assert_error(client_for(north.student).get("/api/v1/usage/"), 404)
    assert_error(client_for(north.student).get("/api/v1/usage/hosts/"), 404)
    assert_error(client_for(north.teacher).get("/api/v1/usage/hosts/"), 404)
    teacher = client_for(north.teacher)
    assert_error(teacher.get("/api/v1/usage/", {"course": north.other_course.pk}), 404)
    assert_error(teacher.get("/api/v1/usage/", {"course": south.course.pk}), 404)
    manager = client_for(north.manager)
    assert_error(manager.get("/api/v1/usage/", {"school": south.school.pk}), 404)
    assert_error(manager.get("/api/v1/usage/", {"course": south.course.pk}), 404)
    assert client_for(None).get("/api/v1/usage/").status_code in (401, 403)


def test_bad_parameters_get_a_clear_refusal(north: Campus, settings: Any) -> None:
    client = client_for(north.manager)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"since": "2026-11-10", "until": "2026-11-01"}, "since"),
        ({"since": "2020-01-01", "until": "2026-11-01"}, "since"),
        ({"since": "1999-12-31", "until": "2000-01-02"}, "since"),
        ({"until": "9999-12-31"}, "until"),
        ({"since": "yesterday"}, "since"),
        ({"by": "hypervisor"}, "by"),
        ({"course": "0"}, "course"),
        ({"course": str(2**70)}, "course"),
        ({"school": "x"}, "school"),
    ]
    for params, field in cases:
        body = assert_error(client.get("/api/v1/usage/", params), 400)
        assert field in body["extra"]["fields"], (params, body)
    with pytest.raises(ApplicationError):
        usage_query(north.manager, since=date(2026, 1, 1), until=date(2027, 3, 1))
    with pytest.raises(NotFoundError):
        usage_query(north.student)


def test_the_api_answers_the_documented_shape(hours: dict[str, Desktop], north: Campus) -> None:
    body = client_for(north.teacher).get("/api/v1/usage/", {"by": "student"}).json()
    assert set(body) == {
        "since",
        "until",
        "by",
        "total_hours",
        "summed_until",
        "totals",
        "days",
    } | {"week"}
    assert body["totals"] == [
        {"id": north.student.pk, "name": north.student.username, "hours": 1.0}
    ]
    assert len(body["days"]) == 30 and len(body["week"]) == 7 * 24
    assert body["total_hours"] == 1.0


# --- the page and its CSV ----------------------------------------------------------------


def test_the_usage_page_draws_the_charts_and_escapes_names(
    hours: dict[str, Desktop], north: Campus, admin: User, test_hypervisor: Any
) -> None:
    north.course.name = '<script>alert("x")</script>'
    north.course.save()
    HostLoadSample.objects.create(
        hypervisor=test_hypervisor,
        at=timezone.now() - timedelta(hours=1),
        cpu_load=0.5,
        memory_mib=1024,
        free_memory_mib=256,
        running_domains=3,
    )
    page = client_for(admin, token=False).get(reverse("admin-usage"))
    assert page.status_code == 200
    html = page.content.decode()
    assert html.count('class="chart"') == 4  # per day, the week, CPU and memory per host
    assert "<script>alert" not in html and "&lt;script&gt;alert" in html
    assert "3.0</strong> desktop hours" in html
    assert 'aria-label="Desktop hours per day"' in html
    assert test_hypervisor.name in html
    teacher = client_for(north.teacher, token=False).get(reverse("admin-usage"))
    assert teacher.status_code == 200
    assert teacher.content.decode().count('class="chart"') == 2  # no hosts for a teacher
    other = client_for(north.teacher, token=False).get(
        reverse("admin-usage"), {"course": north.other_course.pk}
    )
    assert other.status_code == 404
    bad = client_for(north.teacher, token=False).get(reverse("admin-usage"), {"since": "nope"})
    assert bad.status_code == 400 and "since" in bad.content.decode()
    student = client_for(north.student, token=False).get(reverse("admin-usage"))
    assert student.status_code == 302  # to the admin's sign-in, like every admin page


def test_the_csv_keeps_names_that_look_like_formulas_as_text(
    hours: dict[str, Desktop], north: Campus
) -> None:
    north.course.name = "=HYPERLINK(1)"
    north.course.save()
    client = client_for(north.teacher, token=False)
    response = client.get(reverse("admin-usage-csv"), {"table": "totals"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows == [["course", "name", "hours"], [str(north.course.pk), "'=HYPERLINK(1)", "1.0"]]
    days = list(
        csv.reader(
            io.StringIO(client.get(reverse("admin-usage-csv"), {"table": "days"}).content.decode())
        )
    )
    assert len(days) == 31
    assert client.get(reverse("admin-usage-csv"), {"table": "hosts"}).status_code == 404
    assert client.get(reverse("admin-usage-csv"), {"table": "secrets"}).status_code == 400


# --- the hosts' load ----------------------------------------------------------------------


def sample(hypervisor: Any, now: datetime) -> None:
    hypervisor_record_sample(
        hypervisor=hypervisor,
        sample=libvirt_driver.HostSample(
            hostname="h",
            cpus=4,
            memory_mib=8192,
            free_memory_mib=4096,
            running_domains=2,
            cpu_busy_ns=None,
            cpu_total_ns=None,
        ),
        now=now,
    )


def test_a_hosts_load_is_kept_every_few_minutes_and_old_samples_go(
    test_hypervisor: Any, settings: Any, north: Campus
) -> None:
    settings.ISARD_HOST_LOAD_SAMPLE_SECONDS = 300
    now = timezone.now()
    sample(test_hypervisor, now)
    sample(test_hypervisor, now + timedelta(seconds=10))
    assert HostLoadSample.objects.count() == 1
    sample(test_hypervisor, now + timedelta(seconds=301))
    assert HostLoadSample.objects.count() == 2
    kept = HostLoadSample.objects.first()
    assert kept is not None
    assert (kept.memory_mib, kept.free_memory_mib, kept.running_domains) == (8192, 4096, 2)
    body = client_for(north.manager).get("/api/v1/usage/hosts/").json()
    [host] = body["hosts"]
    assert host["name"] == test_hypervisor.name
    assert host["points"][0]["memory_used"] == 0.5
    assert (
        host_load_prune(now=now + timedelta(days=settings.ISARD_HOST_LOAD_KEEP_DAYS, hours=1)) == 2
    )


def test_the_admin_index_links_the_usage_page(north: Campus) -> None:
    page = client_for(north.teacher, token=False).get(reverse("admin:index"))
    assert page.status_code == 200
    assert reverse("admin-usage") in page.content.decode()
