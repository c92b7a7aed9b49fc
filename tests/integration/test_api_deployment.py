"""Through the REST API, on real guests: a teacher deploys to a class and starts it.

Two TCG guests only (the machine is shared). The API's requests run in the test; the
tasks they schedule run through the `run` fixture, exactly as a worker would run them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from accounts.choices import CourseRole
from accounts.tests.factories import MembershipFactory, UserFactory
from desktops.choices import DesktopStatus
from desktops.models import Desktop
from desktops.services.domains import serial_log_path
from hypervisors.guest_image import parse_boot_count
from tests.campus import Campus, client_for
from tests.integration.conftest import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.django_db,
    pytest.mark.usefixtures("clean_throttles"),
]


def api(run: Any, capture: Any, call: Any, *args: Any, **kwargs: Any) -> Any:
    """One API request, then every task it scheduled."""
    with capture(execute=False) as callbacks:
        response = call(*args, **kwargs)
    run.process(callbacks)
    return response


def booted(desktop: Desktop) -> Callable[[], int | None]:
    """Reads the boot count the guest prints on its serial console, once it has."""
    log = serial_log_path(desktop)

    def count() -> int | None:
        return parse_boot_count(log.read_text(errors="replace")) if log.exists() else None

    return count


def test_a_class_deployed_and_started_through_the_api_boots(
    run: Any,
    django_capture_on_commit_callbacks: Any,
    north: Campus,
    demo_template: Any,
    guests: Any,
) -> None:
    late = UserFactory.create(username="north-late", school=north.school)
    MembershipFactory.create(course=north.course, user=late, role=CourseRole.STUDENT)
    teacher = client_for(north.teacher)
    created = api(
        run,
        django_capture_on_commit_callbacks,
        teacher.post,
        "/api/v1/deployments/",
        {"name": "Lab", "course": north.course.pk, "template": demo_template.pk},
        format="json",
    )
    assert created.status_code == 202, created.content
    deployment = created.json()["deployment"]["id"]
    desktops = list(Desktop.objects.filter(deployment_id=deployment))
    assert len(desktops) == 2
    assert {d.status for d in desktops} == {DesktopStatus.STOPPED}, [
        d.status_reason for d in desktops
    ]

    started = api(
        run,
        django_capture_on_commit_callbacks,
        teacher.post,
        f"/api/v1/deployments/{deployment}/start/",
    )
    assert started.status_code == 202 and started.json()["refused"] == []
    for desktop in desktops:
        desktop.refresh_from_db()
        assert desktop.status == DesktopStatus.STARTED, desktop.status_reason
        wait_for(booted(desktop), 120, f"{desktop.name} of {desktop.owner} to boot")

    # Each student sees their running desktop, and only theirs.
    listed = client_for(late).get("/api/v1/desktops/").json()["results"]
    assert [(d["owner"], d["status"]) for d in listed] == [(late.pk, DesktopStatus.STARTED)]

    stopped = api(
        run,
        django_capture_on_commit_callbacks,
        teacher.post,
        f"/api/v1/deployments/{deployment}/stop/",
        {"force": True},
        format="json",
    )
    assert stopped.status_code == 202
    assert {d["status"] for d in stopped.json()["changed"]} == {DesktopStatus.STOPPING}
    for desktop in desktops:  # the force-off tasks have run meanwhile
        desktop.refresh_from_db()
        assert desktop.status == DesktopStatus.STOPPED, desktop.status_reason
