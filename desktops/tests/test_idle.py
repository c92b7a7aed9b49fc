"""Idle shutdown: a running desktop nobody has had on screen for its course's limit."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from accounts.models import Course
from accounts.services.courses import course_update_settings
from desktops.choices import DesktopStatus
from desktops.models import Desktop, DesktopEvent
from desktops.services.idle import desktops_shut_down_idle
from desktops.services.lifecycle import desktop_start
from desktops.viewer.presence import presence_of, viewer_gone, viewer_seen
from isard.core.metrics import metrics_redis
from tests.campus import Campus

pytestmark = [pytest.mark.django_db]

S = DesktopStatus


@pytest.fixture(autouse=True)
def no_presence() -> Iterator[None]:
    """Desktop ids repeat between tests; what an earlier test's viewers wrote must not."""

    def clear() -> None:
        client = metrics_redis()
        for key in client.scan_iter(match="isard:viewer*"):
            client.delete(key)

    clear()
    yield
    clear()


@pytest.fixture
def watched(north: Campus) -> Course:
    """North's class: a desktop nobody looks at for 10 minutes is shut down."""
    return course_update_settings(
        actor=north.teacher, course=north.course, idle_shutdown_minutes=10
    )


def _started(run: Any, desktop: Desktop, north: Campus) -> datetime:
    run(desktop_start, actor=north.student, desktop=desktop)
    desktop.refresh_from_db()
    assert desktop.status == S.STARTED
    return desktop.status_changed_at


def test_a_desktop_nobody_looks_at_is_shut_down_after_the_course_s_limit(
    run: Any, watched: Course, exam_desktop: Desktop, north: Campus
) -> None:
    started = _started(run, exam_desktop, north)
    assert run(desktops_shut_down_idle, now=started + timedelta(minutes=9)) == 0
    with run.capture(execute=False):
        assert desktops_shut_down_idle(now=started + timedelta(minutes=11)) == 1
    exam_desktop.refresh_from_db()
    assert exam_desktop.status == S.SHUTTING_DOWN
    assert "Nobody had its screen open for 10 min" in exam_desktop.status_reason
    event = DesktopEvent.objects.filter(desktop=exam_desktop).order_by("-pk").first()
    assert event is not None and event.actor is None and "idle" in event.reason


def test_an_open_viewer_keeps_it_running_and_the_clock_starts_when_it_closes(
    run: Any, watched: Course, exam_desktop: Desktop, north: Campus
) -> None:
    started = _started(run, exam_desktop, north)
    at = started.timestamp()
    viewer_seen(exam_desktop.pk, "browser-1", now=at + 9 * 60)
    assert presence_of([exam_desktop.pk], now=at + 9 * 60)[exam_desktop.pk].open == 1
    assert run(desktops_shut_down_idle, now=started + timedelta(minutes=10, seconds=30)) == 0
    viewer_gone(exam_desktop.pk, "browser-1", now=at + 11 * 60)
    assert run(desktops_shut_down_idle, now=started + timedelta(minutes=20)) == 0
    with run.capture(execute=False):
        assert desktops_shut_down_idle(now=started + timedelta(minutes=22)) == 1


def test_a_viewer_whose_process_died_stops_counting(
    run: Any, watched: Course, exam_desktop: Desktop, north: Campus
) -> None:
    started = _started(run, exam_desktop, north)
    viewer_seen(exam_desktop.pk, "gone-without-a-word", now=started.timestamp() + 60)
    # No heartbeat since minute 1: stale after 150 s, so at minute 15 nobody is looking.
    with run.capture(execute=False):
        assert desktops_shut_down_idle(now=started + timedelta(minutes=15)) == 1


def test_free_pool_desktops_and_courses_without_a_limit_are_never_idle(
    run: Any, watched: Course, north: Campus, one_running_pool: Any
) -> None:
    pool = one_running_pool()
    free = Desktop.objects.get(pool=pool)
    assert free.status == S.STARTED
    later = free.status_changed_at + timedelta(days=1)
    assert run(desktops_shut_down_idle, now=later) == 0
    course_update_settings(actor=north.teacher, course=watched, idle_shutdown_minutes=0)
    Desktop.objects.filter(pk=free.pk).update(pool=None)  # an ordinary running desktop now
    assert run(desktops_shut_down_idle, now=later) == 0


def test_without_an_answer_from_redis_nothing_is_shut_down(
    run: Any, watched: Course, exam_desktop: Desktop, north: Campus, settings: Any
) -> None:
    started = _started(run, exam_desktop, north)
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    assert run(desktops_shut_down_idle, now=started + timedelta(hours=5)) == 0
    exam_desktop.refresh_from_db()
    assert exam_desktop.status == S.STARTED
