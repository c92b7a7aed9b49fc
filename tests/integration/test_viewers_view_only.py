"""Issue 8 on a real guest: a teacher looks at a student's screen without touching it.

The student is connected through the platform's proxy (Daphne in this process, as in
test_viewers.py); the course's teacher then connects view-only through the same proxy,
even asking for an exclusive session (ClientInit shared-flag 0). QEMU keeps the student
connected, because the proxy always asks for a shared one, and the keys the teacher types
never reach the guest: the proxy drops them. The student's own keys, typed afterwards,
reach the guest's shell and appear on its VGA text screen, so the guest was listening.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest
from django.conf import settings
from django.test import Client

from accounts.choices import CourseRole, Role
from accounts.tests.factories import CourseFactory, MembershipFactory, UserFactory
from desktops.models import Desktop, DesktopEvent, ViewerToken
from desktops.viewer.services import viewer_token_issue
from tests.integration import test_viewers
from tests.integration.browser import (
    ARTIFACTS,
    AsgiServer,
    canvas_matches_screen,
    sign_in,
    vga_text,
    wait_for_state,
)
from tests.integration.conftest import wait_for
from tests.integration.test_viewers_rfb import (
    DESKTOP_SIZE,
    PIXEL_FORMAT,
    RAW,
    Framebuffer,
    RfbClient,
    WebsocketTransport,
)

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

# The guest of test_viewers.py; the tasks run directly, SPICE TLS, the Daphne server and
# Chromium are fixtures of tests/integration/conftest.py.
running_guest = test_viewers.running_guest

KEY_RETURN = 0xFF0D


class ExclusiveAskingClient(RfbClient):
    """An RFB client whose ClientInit asks for exclusive access (shared-flag 0), which
    QEMU's default policy answers by disconnecting every other viewer."""

    async def initialise(self) -> Framebuffer:
        read, write = self.transport.read_exactly, self.transport.write
        await write(b"\x00")
        width, height = struct.unpack(">HH", await read(4))
        await read(16)
        (name_length,) = struct.unpack(">I", await read(4))
        name = (await read(name_length)).decode(errors="replace")
        self.framebuffer = Framebuffer(width, height, name)
        self.framebuffer.resize(width, height)
        await write(b"\x00\x00\x00\x00" + PIXEL_FORMAT)
        await write(struct.pack(">BxH2i", 2, 2, RAW, DESKTOP_SIZE))
        return self.framebuffer


async def type_text(client: RfbClient, text: str) -> None:
    """Key down and up for each character (their keysyms are their Latin-1 codes), then Return."""
    for keysym in [ord(character) for character in text] + [KEY_RETURN]:
        for down in (1, 0):
            await client.transport.write(struct.pack(">BBxxI", 4, down, keysym))


def cookie_of(user: Any) -> str:
    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


def test_a_teachers_view_only_look_keeps_the_student_connected_and_drops_the_teachers_keys(
    running_guest: tuple[Any, Desktop], platform_server: AsgiServer
) -> None:
    student, desktop = running_guest
    course = CourseFactory.create(school=student.school)
    teacher = UserFactory.create(role=Role.TEACHER, school=student.school, username="tom")
    MembershipFactory.create(course=course, user=teacher, role=CourseRole.TEACHER)
    MembershipFactory.create(course=course, user=student, role=CourseRole.STUDENT)
    Desktop.objects.filter(pk=desktop.pk).update(course=course)
    desktop.refresh_from_db()
    base = f"ws://127.0.0.1:{platform_server.port}"
    origin = platform_server.base_url

    # Django's ORM stays out of the event loop: the tokens and sessions first (a token
    # lives a minute, far longer than this takes).
    own = viewer_token_issue(actor=student, desktop=desktop)
    look = viewer_token_issue(actor=teacher, desktop=desktop, view_only=True)
    student_cookie, teacher_cookie = cookie_of(student), cookie_of(teacher)

    async def scenario() -> str:
        student_client = RfbClient(
            await WebsocketTransport.open(
                base + own.websocket_path, cookie=student_cookie, origin=origin
            )
        )
        await student_client.handshake("")
        await student_client.full_frame()

        teacher_client = ExclusiveAskingClient(
            await WebsocketTransport.open(
                base + look.websocket_path, cookie=teacher_cookie, origin=origin
            )
        )
        await teacher_client.handshake("")
        seen_by_teacher = await teacher_client.full_frame()
        assert seen_by_teacher.name == f"QEMU ({desktop.domain_name})"
        await type_text(teacher_client, "echo teacherwashere")
        # The teacher's connection still gets the screen after typing (it was not cut off
        # for its input: the input was dropped quietly).
        await teacher_client.full_frame()

        # The student is still connected, sees the screen, and types into the guest.
        await student_client.full_frame()
        await type_text(student_client, "echo studenttyped")
        await asyncio.to_thread(
            wait_for,
            lambda: "studenttyped" in vga_text(desktop),
            60,
            "the student's keys on the guest's screen",
        )
        await student_client.full_frame()
        await teacher_client.close()
        await student_client.close()
        return vga_text(desktop)

    screen = asyncio.run(scenario())

    assert "studenttyped" in screen
    assert "teacherwashere" not in screen
    look_token = ViewerToken.objects.get(user=teacher)
    assert look_token.view_only and look_token.used_at is not None
    audit = DesktopEvent.objects.filter(desktop=desktop, actor=teacher).get()
    assert audit.reason.startswith("view-only look at the screen by tom from ")


def test_chromium_opens_the_teachers_look_view_only_with_a_banner(
    running_guest: tuple[Any, Desktop], platform_server: AsgiServer, chromium: Any
) -> None:
    from selenium.webdriver.common.by import By

    student, desktop = running_guest
    course = CourseFactory.create(school=student.school)
    teacher = UserFactory.create(role=Role.TEACHER, school=student.school, username="tom")
    MembershipFactory.create(course=course, user=teacher, role=CourseRole.TEACHER)
    Desktop.objects.filter(pk=desktop.pk).update(course=course)
    sign_in(chromium, platform_server, teacher)

    chromium.get(f"{platform_server.base_url}/desktops/{desktop.pk}/viewer/")

    status = wait_for_state(chromium, "connected")
    assert status == f"Looking at (view only) QEMU ({desktop.domain_name})"
    banner = chromium.find_element(By.ID, "view-only")
    assert banner.is_displayed() and "View only" in banner.text
    assert not chromium.find_elements(By.ID, "ctrl-alt-del")
    wait_for(lambda: canvas_matches_screen(chromium, desktop) > 0.99, 30, "the canvas")
    ARTIFACTS.mkdir(exist_ok=True)
    chromium.save_screenshot(str(ARTIFACTS / "viewer-view-only-chromium.png"))
    assert desktop.graphics_password not in chromium.page_source
