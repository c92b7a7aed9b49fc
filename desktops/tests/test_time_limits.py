"""Time limits: a course's longest session, the warning before its end, and "extend"."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import Course
from accounts.services.courses import course_update_settings
from desktops.choices import DesktopStatus
from desktops.models import Desktop, DesktopEvent
from desktops.pools.services import pool_take
from desktops.services import time_limits
from desktops.services.lifecycle import desktop_start
from desktops.services.time_limits import desktop_extend, desktops_enforce_time_limits
from isard.core.errors import ApplicationError, ConflictError, NotFoundError
from tests.campus import Campus, assert_error, client_for

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("clean_throttles")]

S = DesktopStatus


@pytest.fixture
def limited(north: Campus) -> Course:
    """North's class: an hour per session, warned 5 min before, one extension of 30 min."""
    return course_update_settings(
        actor=north.teacher,
        course=north.course,
        session_limit_minutes=60,
        session_warning_minutes=5,
        session_extensions=1,
        session_extension_minutes=30,
    )


def test_a_session_is_warned_extended_once_and_shut_down_at_its_end(
    run: Any, limited: Course, exam_desktop: Desktop, north: Campus, monkeypatch: Any
) -> None:
    sent: list[tuple[int, dict[str, Any]]] = []
    monkeypatch.setattr(time_limits, "broadcast_status_payloads", sent.extend)
    started_at = timezone.now()
    run(desktop_start, actor=north.student, desktop=exam_desktop)
    exam_desktop.refresh_from_db()
    assert exam_desktop.status == S.STARTED and exam_desktop.session_ends_at is not None
    ends = exam_desktop.session_ends_at
    assert timedelta(minutes=59) < ends - started_at < timedelta(minutes=61)
    assert exam_desktop.session_warn_at == ends - timedelta(minutes=5)

    assert run(desktops_enforce_time_limits, now=ends - timedelta(minutes=10)) == {
        "warned": 0,
        "ended": 0,
    }
    near = ends - timedelta(minutes=4)
    assert run(desktops_enforce_time_limits, now=near)["warned"] == 1
    assert sent and sent[-1][0] == north.student.pk
    assert "shuts down in 4 min" in sent[-1][1]["warning"] and "extend" in sent[-1][1]["warning"]
    assert run(desktops_enforce_time_limits, now=near)["warned"] == 0  # warned once

    exam_desktop.refresh_from_db()
    desktop_extend(actor=north.student, desktop=exam_desktop)
    exam_desktop.refresh_from_db()
    assert exam_desktop.session_ends_at == ends + timedelta(minutes=30)
    assert exam_desktop.session_extensions_used == 1
    assert DesktopEvent.objects.filter(desktop=exam_desktop, reason__startswith="extended by 30")
    with pytest.raises(ConflictError, match="cannot be extended again"):
        desktop_extend(actor=north.student, desktop=exam_desktop)
    # The first end passed: it runs on (extended), then its new end shuts it down.
    assert run(desktops_enforce_time_limits, now=ends + timedelta(minutes=1))["ended"] == 0
    later = ends + timedelta(minutes=31)
    with run.capture(execute=False):
        assert desktops_enforce_time_limits(now=later)["ended"] == 1
    exam_desktop.refresh_from_db()
    assert exam_desktop.status == S.SHUTTING_DOWN
    assert "time is over" in exam_desktop.status_reason
    last = DesktopEvent.objects.filter(desktop=exam_desktop).order_by("-pk").first()
    assert last is not None and last.to_status == S.SHUTTING_DOWN and last.actor is None


def test_without_a_limit_nothing_is_timed(run: Any, exam_desktop: Desktop, north: Campus) -> None:
    run(desktop_start, actor=north.student, desktop=exam_desktop)
    exam_desktop.refresh_from_db()
    assert exam_desktop.session_ends_at is None
    later = timezone.now() + timedelta(days=2)
    assert run(desktops_enforce_time_limits, now=later) == {"warned": 0, "ended": 0}
    with pytest.raises(ConflictError, match="no time limit"):
        desktop_extend(actor=north.student, desktop=exam_desktop)


def test_a_pool_session_begins_when_the_student_takes_the_desktop(
    run: Any, limited: Course, north: Campus, one_running_pool: Any
) -> None:
    pool = one_running_pool()
    free = Desktop.objects.get(pool=pool, status=S.STARTED)
    assert free.session_ends_at is None  # running for nobody yet: never timed out
    taken = run(pool_take, actor=north.student, pool=pool)
    taken.refresh_from_db()
    assert taken.pk == free.pk and taken.session_ends_at is not None


def test_settings_are_bounded_and_only_for_the_course_s_teachers(
    limited: Course, north: Campus, south: Campus
) -> None:
    with pytest.raises(ApplicationError, match="session_limit_minutes"):
        course_update_settings(actor=north.teacher, course=limited, session_limit_minutes=10**6)
    with pytest.raises(NotFoundError):
        course_update_settings(actor=north.student, course=limited, session_limit_minutes=1)
    assert Course.objects.get(pk=limited.pk).session_limit_minutes == 60
    url = f"/api/v1/courses/{limited.pk}/settings/"
    api = client_for(north.teacher)
    response = api.patch(url, {"session_extensions": 3}, format="json")
    assert response.status_code == 200 and response.json()["session_extensions"] == 3
    assert response.json()["session_limit_minutes"] == 60  # left out: unchanged
    assert_error(api.patch(url, {"session_warning_minutes": -1}, format="json"), 400)
    assert_error(
        client_for(north.student).patch(url, {"session_extensions": 9}, format="json"), 403
    )
    assert_error(
        client_for(south.teacher).patch(url, {"session_extensions": 9}, format="json"), 404
    )


def test_the_card_and_the_api_offer_the_extension(
    run: Any, limited: Course, exam_desktop: Desktop, north: Campus
) -> None:
    run(desktop_start, actor=north.student, desktop=exam_desktop)
    browser = Client()
    browser.force_login(north.student)
    page = browser.get(reverse("dashboard")).content.decode()
    assert "Time limit: shuts down at" in page and "Extend (1 left)" in page
    api = client_for(north.student)
    response = api.post(f"/api/v1/desktops/{exam_desktop.pk}/extend/")
    assert response.status_code == 200 and response.json()["session_ends_at"]
    assert_error(api.post(f"/api/v1/desktops/{exam_desktop.pk}/extend/"), 409)
    page = browser.get(reverse("dashboard")).content.decode()
    assert 'data-role="extend" hidden' in page  # none left: no button to press
    stranger = client_for(north.other_student)
    assert_error(stranger.post(f"/api/v1/desktops/{exam_desktop.pk}/extend/"), 404)
