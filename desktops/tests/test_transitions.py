"""The status machine: one function, a declared table, a conditional update."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from accounts.tests.factories import UserFactory
from desktops.choices import TRANSITIONS, DesktopStatus
from desktops.models import Desktop, DesktopEvent
from desktops.services.transitions import desktop_transition, owner_group
from isard.core.errors import ConflictError
from templates_app.tests.factories import HardwareProfileFactory

pytestmark = pytest.mark.django_db
S = DesktopStatus


def make_desktop(status: DesktopStatus = S.STOPPED) -> Desktop:
    return Desktop.objects.create(
        name="d",
        owner=UserFactory.create(),
        hardware=HardwareProfileFactory.create(),
        status=status,
    )


def test_every_status_has_a_row_in_the_table() -> None:
    assert set(TRANSITIONS) == set(DesktopStatus)


def test_a_transition_not_in_the_table_is_refused() -> None:
    desktop = make_desktop(S.CREATING)
    with pytest.raises(ConflictError, match="cannot become started"):
        desktop_transition(desktop=desktop, to=S.STARTED)
    assert Desktop.objects.get(pk=desktop.pk).status == S.CREATING
    assert not DesktopEvent.objects.exists()


def test_a_stale_desktop_loses_the_race_and_writes_nothing() -> None:
    desktop = make_desktop()
    stale = Desktop.objects.get(pk=desktop.pk)
    desktop_transition(desktop=desktop, to=S.STARTING)
    with pytest.raises(ConflictError, match="changed meanwhile"):
        desktop_transition(desktop=stale, to=S.DELETING)
    assert Desktop.objects.get(pk=desktop.pk).status == S.STARTING
    assert DesktopEvent.objects.filter(desktop=desktop).count() == 1


def test_a_transition_writes_an_event_and_broadcasts_after_commit(
    django_capture_on_commit_callbacks: Any,
) -> None:
    desktop = make_desktop()
    layer = get_channel_layer()
    assert layer is not None
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(owner_group(desktop.owner_id), channel)
    with django_capture_on_commit_callbacks(execute=True):
        desktop_transition(desktop=desktop, to=S.STARTING, reason="asked")
    event = DesktopEvent.objects.get(desktop=desktop)
    assert (event.from_status, event.to_status, event.reason) == (S.STOPPED, S.STARTING, "asked")
    message = async_to_sync(layer.receive)(channel)
    assert message["type"] == "desktop.status"
    assert message["desktop"]["status"] == "starting"
    assert message["desktop"]["id"] == desktop.pk


def test_the_cards_offer_what_the_transition_table_allows() -> None:
    from desktops.choices import ACTION_TARGETS, actions_allowed

    assert {status: [a.value for a in actions_allowed(status)] for status in S} == {
        S.CREATING: [],
        S.STOPPED: ["start", "delete"],
        S.STARTING: [],
        S.STARTED: ["open", "vv", "shutdown", "stop"],
        S.SHUTTING_DOWN: ["stop"],
        S.STOPPING: [],
        S.FAILED: ["start", "delete"],
        S.CREATING_TEMPLATE: [],
        S.RESETTING: [],
        S.UNKNOWN: ["delete"],
        S.DELETING: [],
        S.DELETED: ["restore"],
    }
    for status in S:
        for action in actions_allowed(status):
            target = ACTION_TARGETS.get(action)
            assert target is None or target in TRANSITIONS[status], (status, action)
