"""The event log in the admin: every desktop's history in one list, scoped by role."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from desktops.choices import DesktopStatus
from desktops.models import DesktopEvent
from desktops.services.transitions import desktop_transition

pytestmark = pytest.mark.django_db

LOG = "/admin/desktops/desktopevent/"


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_event_log_shows_every_desktops_status_changes_to_an_admin(
    north: Any, south: Any, admin: Any
) -> None:
    desktop_transition(
        desktop=north.student_desktop, to=DesktopStatus.STARTING, actor=north.student
    )
    desktop_transition(desktop=south.student_desktop, to=DesktopStatus.FAILED, reason="no host")
    page = signed_in(admin).get(LOG)
    assert page.status_code == 200
    text = page.content.decode()
    assert "north-student desktop" in text and "south-student desktop" in text
    assert "no host" in text and north.course.name in text
    failed = signed_in(admin).get(LOG, {"to_status__exact": "failed"}).content.decode()
    assert "south-student desktop" in failed and "north-student desktop" not in failed


def test_a_manager_reads_only_their_schools_events_and_nobody_edits_the_log(
    north: Any, south: Any, admin: Any
) -> None:
    desktop_transition(desktop=north.student_desktop, to=DesktopStatus.STARTING)
    desktop_transition(desktop=south.student_desktop, to=DesktopStatus.STARTING)
    text = signed_in(north.manager).get(LOG).content.decode()
    assert "north-student desktop" in text and "south-student desktop" not in text

    south_event = DesktopEvent.objects.get(desktop=south.student_desktop)
    assert signed_in(north.manager).get(f"{LOG}{south_event.pk}/change/").status_code == 302
    for person in (admin, south.manager):
        client = signed_in(person)
        assert client.get(f"{LOG}add/").status_code == 403
        assert client.post(f"{LOG}{south_event.pk}/delete/", {"post": "yes"}).status_code == 403
        client.post(f"{LOG}{south_event.pk}/change/", {"reason": "rewritten"})
    south_event.refresh_from_db()
    assert south_event.reason != "rewritten"
