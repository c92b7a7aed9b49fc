"""A view-only look at a student's screen: who gets such a token, what is recorded, the
page that shows it, and the proxy's filter that keeps the looker's input off the guest."""

from __future__ import annotations

import re
import struct
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from accounts.choices import CourseRole
from accounts.models import CourseMembership
from desktops.choices import DesktopStatus
from desktops.models import Desktop, DesktopEvent, ViewerToken
from desktops.viewer.checks import ViewerRefusedError, ViewerUnavailableError
from desktops.viewer.rfb import ClientMessages, RfbClientMessageError, client_message_size
from desktops.viewer.services import viewer_token_consume, viewer_token_issue
from hypervisors.drivers import libvirt_driver
from hypervisors.tests.factories import HypervisorFactory
from isard.core.errors import NotFoundError
from tests.campus import Campus

PASSWORD = "Pa55-w0r"


@pytest.fixture
def started(north: Campus) -> Desktop:
    """The north student's desktop in the teacher's course, running."""
    Desktop.objects.filter(pk=north.student_desktop.pk).update(
        status=DesktopStatus.STARTED,
        hypervisor=HypervisorFactory.create(),
        graphics_password=PASSWORD,
    )
    north.student_desktop.refresh_from_db()
    return north.student_desktop


@pytest.fixture
def vnc_port(monkeypatch: pytest.MonkeyPatch) -> None:
    def ports(uri: str, name: str) -> libvirt_driver.GraphicsPorts:
        return libvirt_driver.GraphicsPorts(None, None, 5907, "127.0.0.1")

    monkeypatch.setattr(libvirt_driver, "graphics_ports", ports)


def refusal(error: pytest.ExceptionInfo[Exception]) -> str:
    assert isinstance(error.value, ViewerRefusedError | ViewerUnavailableError)
    return str(error.value.extra["reason"])


# --- who gets a view-only token ---------------------------------------------------------------


def test_the_courses_teacher_gets_a_view_only_token_for_a_students_screen(
    north: Campus, started: Desktop
) -> None:
    access = viewer_token_issue(actor=north.teacher, desktop=started, view_only=True)
    assert access.view_only and PASSWORD not in repr(access)
    record = ViewerToken.objects.get()
    assert record.user == north.teacher and record.view_only


def test_the_teacher_never_gets_an_ordinary_token_for_a_students_desktop(
    north: Campus, started: Desktop
) -> None:
    with pytest.raises(ViewerRefusedError) as refused:
        viewer_token_issue(actor=north.teacher, desktop=started)
    assert refusal(refused) == "not-owner"


def test_the_owner_gets_no_view_only_token_for_their_own_desktop(
    north: Campus, started: Desktop
) -> None:
    with pytest.raises(ViewerRefusedError) as refused:
        viewer_token_issue(actor=north.student, desktop=started, view_only=True)
    assert refusal(refused) == "own-desktop"


@pytest.mark.parametrize("who", ["other_teacher", "other_student"])
def test_another_teacher_or_a_classmate_gets_no_view_only_token(
    north: Campus, started: Desktop, who: str
) -> None:
    if who == "other_student":  # a classmate in the same course
        CourseMembership.objects.create(
            course=north.course, user=north.other_student, role=CourseRole.STUDENT
        )
    events = DesktopEvent.objects.filter(desktop=started).count()
    with pytest.raises(NotFoundError):
        viewer_token_issue(actor=getattr(north, who), desktop=started, view_only=True)
    assert not ViewerToken.objects.exists()
    assert DesktopEvent.objects.filter(desktop=started).count() == events


def test_a_stopped_desktop_has_no_screen_to_look_at(north: Campus) -> None:
    with pytest.raises(ViewerUnavailableError) as refused:
        viewer_token_issue(actor=north.teacher, desktop=north.student_desktop, view_only=True)
    assert refusal(refused) == "not-running"


def test_a_view_only_connection_is_recorded_with_the_teachers_name(
    north: Campus, started: Desktop, vnc_port: None
) -> None:
    access = viewer_token_issue(actor=north.teacher, desktop=started, view_only=True)

    target = viewer_token_consume(token=access.token, user=north.teacher, client="10.0.0.9:1")

    assert target.view_only and target.port == 5907
    event = DesktopEvent.objects.filter(desktop=started).latest("pk")
    assert event.actor == north.teacher
    assert event.reason == "view-only look at the screen by north-teacher from 10.0.0.9:1"


def test_the_owners_connection_is_not_view_only(
    north: Campus, started: Desktop, vnc_port: None
) -> None:
    access = viewer_token_issue(actor=north.student, desktop=started)
    assert not viewer_token_consume(token=access.token, user=north.student).view_only


def test_a_teacher_who_left_the_course_cannot_spend_a_view_only_token(
    north: Campus, started: Desktop, vnc_port: None
) -> None:
    access = viewer_token_issue(actor=north.teacher, desktop=started, view_only=True)
    CourseMembership.objects.filter(course=north.course, user=north.teacher).delete()

    with pytest.raises(NotFoundError):
        viewer_token_consume(token=access.token, user=north.teacher)


# --- the pages ------------------------------------------------------------------------------


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def without_csrf(page: bytes) -> bytes:
    return re.sub(rb'name="csrf-token" content="[^"]*"', b"", page)


@pytest.mark.parametrize("who", ["manager", "teacher", "student"])
def test_another_schools_people_find_no_viewer_there_and_leave_no_trace(
    north: Campus, south: Campus, started: Desktop, who: str
) -> None:
    """Every viewer path answers a stranger exactly as it answers an id that is free."""
    prober = signed_in(getattr(south, who))
    free_id = Desktop.objects.order_by("-pk").values_list("pk", flat=True)[0] + 1000
    events = DesktopEvent.objects.filter(desktop=started).count()
    for name, method in [
        ("desktop-viewer", "get"),
        ("desktop-viewer-token", "post"),
        ("desktop-viewer-vv", "get"),
        ("desktop-viewer-rdp", "get"),
    ]:
        probe = getattr(prober, method)(reverse(name, args=[started.pk]))
        free = getattr(prober, method)(reverse(name, args=[free_id]))
        assert probe.status_code == free.status_code == 404, name
        assert without_csrf(probe.content) == without_csrf(free.content), name
        assert started.name.encode() not in probe.content
    assert DesktopEvent.objects.filter(desktop=started).count() == events
    assert not ViewerToken.objects.exists()


def test_the_teachers_viewer_page_opens_view_only_with_a_banner(
    north: Campus, started: Desktop
) -> None:
    url = reverse("desktop-viewer", args=[started.pk])
    teacher_page = signed_in(north.teacher).get(url)
    body = teacher_page.content.decode()
    assert teacher_page.status_code == 200
    assert 'id="view-only"' in body and '"view_only": true' in body
    assert 'id="ctrl-alt-del"' not in body and PASSWORD not in body
    owner_page = signed_in(north.student).get(url).content.decode()
    assert 'id="view-only"' not in owner_page and '"view_only": false' in owner_page


def test_the_teachers_reconnect_token_is_view_only_too(north: Campus, started: Desktop) -> None:
    response = signed_in(north.teacher).post(reverse("desktop-viewer-token", args=[started.pk]))
    assert response.status_code == 200 and response.json()["view_only"] is True
    assert ViewerToken.objects.get().view_only


def test_the_course_page_links_a_started_desktop_to_the_view_only_look(
    north: Campus, started: Desktop
) -> None:
    body = signed_in(north.teacher).get(f"/courses/{north.course.pk}/")
    html = body.content.decode()
    assert 'data-role="view-only"' in html
    assert reverse("desktop-viewer", args=[started.pk]) in html
    Desktop.objects.filter(pk=started.pk).update(status=DesktopStatus.STOPPED)
    stopped = signed_in(north.teacher).get(f"/courses/{north.course.pk}/")
    assert 'data-role="view-only"' not in stopped.content.decode()


# --- the proxy's filter ---------------------------------------------------------------------

SET_PIXEL_FORMAT = bytes([0, 0, 0, 0]) + bytes(16)
SET_ENCODINGS = struct.pack(">BxHii", 2, 2, 0, -223)
UPDATE_REQUEST = struct.pack(">BBHHHH", 3, 1, 0, 0, 640, 480)
KEY_DOWN = struct.pack(">BBxxI", 4, 1, 0x61)
POINTER = struct.pack(">BBHH", 5, 1, 10, 10)
CUT_TEXT = struct.pack(">Bxxxi", 6, 5) + b"hello"
EXTENDED_CUT_TEXT = struct.pack(">Bxxxi", 6, -8) + bytes(8)
CONTINUOUS = struct.pack(">BBHHHH", 150, 1, 0, 0, 640, 480)
FENCE = struct.pack(">BxxxIB", 248, 0, 3) + b"abc"
XVP_REBOOT = bytes([250, 0, 1, 3])
SET_DESKTOP_SIZE = struct.pack(">BxHHBx", 251, 800, 600, 1) + bytes(16)
QEMU_KEY = struct.pack(">BBHII", 255, 0, 1, 0x61, 30)
QEMU_AUDIO_FORMAT = struct.pack(">BBHBBI", 255, 1, 2, 3, 2, 44100)

SCREEN_ONLY = SET_PIXEL_FORMAT + SET_ENCODINGS + UPDATE_REQUEST + CONTINUOUS + FENCE
INPUT = (
    KEY_DOWN
    + POINTER
    + CUT_TEXT
    + EXTENDED_CUT_TEXT
    + XVP_REBOOT
    + SET_DESKTOP_SIZE
    + QEMU_KEY
    + QEMU_AUDIO_FORMAT
)


def test_every_message_noVNC_and_qemu_speak_is_measured() -> None:
    for message in (SCREEN_ONLY, INPUT):
        offset = 0
        while offset < len(message):
            size = client_message_size(message[offset:])
            assert size is not None
            offset += size
        assert offset == len(message)


def test_the_owners_bytes_pass_unchanged_except_a_shared_client_init() -> None:
    messages = ClientMessages(view_only=False)
    assert messages.feed(b"\x00" + KEY_DOWN[:3]) == b"\x01" + KEY_DOWN[:3]
    assert messages.feed(KEY_DOWN[3:] + POINTER) == KEY_DOWN[3:] + POINTER


def test_a_view_only_viewer_keeps_its_screen_requests_and_loses_all_input() -> None:
    messages = ClientMessages(view_only=True)
    stream = b"\x00" + SET_PIXEL_FORMAT + KEY_DOWN + SET_ENCODINGS + INPUT + UPDATE_REQUEST
    stream += CONTINUOUS + POINTER + FENCE
    forwarded = b"".join(messages.feed(stream[i : i + 3]) for i in range(0, len(stream), 3))
    assert forwarded == b"\x01" + SCREEN_ONLY
    assert messages.dropped == 10


def test_a_view_only_viewer_that_sends_an_unknown_message_is_cut_off() -> None:
    messages = ClientMessages(view_only=True)
    messages.feed(b"\x01")
    with pytest.raises(RfbClientMessageError):
        messages.feed(bytes([77, 0, 0, 0]))
