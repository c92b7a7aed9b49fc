"""Every event row is one log line with the desktop, the person and the host, once it is
committed; plain lines escape what people typed, JSON lines keep it inside a string."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from django.db import transaction

from accounts.choices import Role
from accounts.tests.factories import UserFactory
from desktops.choices import DesktopStatus
from desktops.models import Desktop, DesktopEvent
from desktops.services.transitions import desktop_transition, desktops_record_created
from hypervisors.models import HypervisorEvent
from hypervisors.tests.factories import HypervisorFactory
from isard.core.logs import EscapingFormatter, JsonFormatter
from templates_app.tests.factories import HardwareProfileFactory

pytestmark = pytest.mark.django_db


def event_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "isard.events"]


@pytest.fixture
def desktop() -> Desktop:
    owner = UserFactory.create(role=Role.STUDENT, username="ana")
    return Desktop.objects.create(
        name="Ana's desktop",
        owner=owner,
        hardware=HardwareProfileFactory.create(),
        status=DesktopStatus.STOPPED,
        hypervisor=HypervisorFactory.create(name="lab-host-1"),
    )


def test_a_status_change_is_one_line_with_the_desktop_person_and_host_after_commit(
    desktop: Desktop, caplog: pytest.LogCaptureFixture, django_capture_on_commit_callbacks: Any
) -> None:
    teacher = UserFactory.create(role=Role.TEACHER, username="tess")
    caplog.set_level(logging.INFO, logger="isard.events")
    with django_capture_on_commit_callbacks(execute=True):
        desktop_transition(
            desktop=desktop, to=DesktopStatus.STARTING, reason="asked", actor=teacher
        )
        assert not event_records(caplog)  # not before the row is committed
    (record,) = event_records(caplog)
    assert record.getMessage() == (
        f"desktop {desktop.pk} “Ana's desktop” stopped -> starting by tess on lab-host-1: asked"
    )
    event: Any = record.event  # type: ignore[attr-defined]
    assert event["kind"] == "desktop" and event["id"] == desktop.pk
    assert event["owner_id"] == desktop.owner_id and event["host"] == "lab-host-1"
    assert event["actor"] == "tess" and event["to_status"] == "starting"


def test_rows_written_in_bulk_are_logged_and_a_rolled_back_row_is_not(
    desktop: Desktop, caplog: pytest.LogCaptureFixture, django_capture_on_commit_callbacks: Any
) -> None:
    caplog.set_level(logging.INFO, logger="isard.events")
    with django_capture_on_commit_callbacks(execute=True):
        desktops_record_created([desktop], actor=None)
        HypervisorEvent.objects.create(hypervisor=desktop.hypervisor, message="went offline")
    messages = [record.getMessage() for record in event_records(caplog)]
    assert messages == [
        f"desktop {desktop.pk} “Ana's desktop” - -> creating on lab-host-1",
        f"host {desktop.hypervisor_id} “lab-host-1” on lab-host-1: went offline",
    ]
    caplog.clear()
    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        DesktopEvent.objects.create(desktop=desktop, to_status="stopped", reason="x")
        raise RuntimeError("rolled back")
    assert not callbacks and not event_records(caplog)


def typed_record(reason: str) -> logging.LogRecord:
    fields = {"kind": "desktop", "id": 1, "reason": reason}
    record = logging.LogRecord("isard.events", logging.INFO, __file__, 1, "%s", (reason,), None)
    record.event = fields
    return record


def test_what_people_typed_stays_inside_one_line_in_both_formats() -> None:
    forged = "ok\n2026-12-03 INFO fake: admin signed in\x1b[31m"
    plain = EscapingFormatter("%(name)s: %(message)s").format(typed_record(forged))
    assert "\n" not in plain and "\x1b" not in plain
    assert plain == "isard.events: ok\\n2026-12-03 INFO fake: admin signed in\\x1b[31m"
    line = JsonFormatter().format(typed_record(forged))
    assert "\n" not in line and "\x1b" not in line
    parsed = json.loads(line)
    assert parsed["message"] == forged and parsed["event"]["reason"] == forged
    assert parsed["level"] == "INFO" and parsed["logger"] == "isard.events"
