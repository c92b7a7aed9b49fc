"""/metrics scraped while a desktop really starts (libvirt's test driver, real qemu-img)."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from accounts.choices import Role
from accounts.tests.factories import UserFactory
from desktops.choices import DesktopStatus
from desktops.models import Desktop
from desktops.services.lifecycle import desktop_start
from desktops.services.provisioning import desktop_create
from desktops.services.transitions import desktop_fail, failure_reason_kind
from isard.core import metrics
from isard.core.tasks import send_task

pytestmark = pytest.mark.django_db

S = DesktopStatus


@pytest.fixture(autouse=True)
def fresh_metrics() -> Iterator[None]:
    metrics.reset_all()
    yield
    metrics.reset_all()


@pytest.fixture
def student() -> Any:
    return UserFactory.create(role=Role.STUDENT)


@pytest.fixture
def desktop(run: Any, test_hypervisor: Any, base_template: Any, student: Any) -> Desktop:
    created = run(desktop_create, actor=student, template=base_template, name="Mine")
    created.refresh_from_db()
    return created


def scrape() -> dict[str, list[Sample]]:
    response = Client().get("/metrics", REMOTE_ADDR="127.0.0.1")
    assert response.status_code == 200
    families = text_string_to_metric_families(response.content.decode())
    return {family.name: family.samples for family in families}


def value(samples: list[Sample], name: str, **labels: str) -> float | None:
    for sample in samples:
        if sample.name == name and sample.labels == labels:
            return sample.value
    return None


def test_a_scrape_during_a_start_sees_it_starting_then_counted_and_timed(
    run: Any,
    desktop: Desktop,
    student: Any,
    test_hypervisor: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    school = student.school.name
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        desktop_start(actor=student, desktop=desktop)
    tasks = [c for c in callbacks if isinstance(c, partial) and c.func is send_task]
    for callback in callbacks:
        if callback not in tasks:
            callback()  # committed: the broadcast and the metrics, not yet the boot task

    during = scrape()
    assert value(during["isard_desktops"], "isard_desktops", status="starting", school=school) == 1
    starts = during["isard_desktop_starts"]
    assert value(starts, "isard_desktop_starts_total", from_status="stopped") == 1
    waits = during["isard_desktop_start_to_running_seconds"]
    assert value(waits, "isard_desktop_start_to_running_seconds_count") is None

    run.process(tasks)  # the worker's part: place, define, start on test:///
    desktop.refresh_from_db()
    assert desktop.status == S.STARTED

    after = scrape()
    assert value(after["isard_desktops"], "isard_desktops", status="started", school=school) == 1
    assert (
        value(after["isard_desktops"], "isard_desktops", status="starting", school=school) is None
    )
    waits = after["isard_desktop_start_to_running_seconds"]
    assert value(waits, "isard_desktop_start_to_running_seconds_count") == 1
    assert value(waits, "isard_desktop_start_to_running_seconds_bucket", le="+Inf") == 1
    boot = after["isard_desktop_boot_seconds"]
    host = test_hypervisor.name
    assert value(boot, "isard_desktop_boot_seconds_count", hypervisor=host) == 1
    guests = after["isard_hypervisor_running_guests"]
    assert value(guests, "isard_hypervisor_running_guests", hypervisor=host) is not None
    starts = after["isard_desktop_starts"]
    assert value(starts, "isard_desktop_starts_total", from_status="stopped") == 1


def test_a_failed_start_is_counted_by_the_kind_of_its_reason(
    run: Any, desktop: Desktop, student: Any, test_hypervisor: Any
) -> None:
    test_hypervisor.state = "offline"
    test_hypervisor.save()
    run(desktop_start, actor=student, desktop=desktop)
    desktop.refresh_from_db()
    assert desktop.status == S.FAILED
    failures = scrape()["isard_desktop_failures"]
    kind = failure_reason_kind(desktop.status_reason)
    assert kind == "no_capacity"
    assert value(failures, "isard_desktop_failures_total", from_status="starting", reason=kind) == 1


def test_a_transition_rolled_back_is_not_counted(
    run: Any, desktop: Desktop, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=False):
        desktop_fail(desktop, "Could not start on lab: boom")
    # The callbacks were captured and never run: as after a rollback.
    assert "isard_desktop_failures_total" not in {
        sample.name for sample in scrape()["isard_desktop_failures"]
    }


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("The desktop's disk or its template is missing: x", "disk_missing"),
        ("Could not start on lab2: libvirt said no", "hypervisor_error"),
        ("No hypervisor is online: ask an administrator", "no_capacity"),
        ("“starting” did not finish (the worker may have stopped); try again.", "interrupted"),
        ("anything a person typed <script>", "other"),
    ],
)
def test_failure_reasons_fall_into_a_few_kinds(reason: str, kind: str) -> None:
    assert failure_reason_kind(reason) == kind


def test_a_class_moved_in_one_transition_is_counted_whole(
    run: Any, test_hypervisor: Any, base_template: Any, student: Any
) -> None:
    from desktops.services.transitions import desktops_transition

    desktops = [
        run(desktop_create, actor=student, template=base_template, name=f"Seat {seat}")
        for seat in range(3)
    ]
    for desktop in desktops:
        desktop.refresh_from_db()
    run(desktops_transition, changes=[(desktop, {}) for desktop in desktops], to=S.STARTING)
    starts = scrape()["isard_desktop_starts"]
    assert value(starts, "isard_desktop_starts_total", from_status="stopped") == 3
