"""A direct link on a real guest: Chromium, never signed in, opens the link of a stopped
desktop; the platform starts it (TCG on qemu:///system, tasks run directly), the page
waits for it, then noVNC shows the guest's real screen through the platform's proxy."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from accounts.choices import CourseRole, Role
from accounts.tests.factories import CourseFactory, MembershipFactory, UserFactory
from desktops.choices import DesktopStatus
from desktops.models import Desktop, DirectLink, ViewerToken
from desktops.services.deployments import deployment_create
from desktops.services.domains import serial_log_path
from desktops.viewer.direct_links import direct_link_create
from hypervisors import tls
from hypervisors.drivers import libvirt_driver
from hypervisors.guest_image import GUEST_READY_MARKER
from tests.integration.browser import (
    ARTIFACTS,
    AsgiServer,
    canvas_matches_screen,
    page_state,
    wait_for_state,
)
from tests.integration.conftest import SYSTEM_URI, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def stopped_exam_desktop(
    direct_tasks: list[str], demo_template: Any, spice_tls: tls.PkiPaths
) -> Iterator[tuple[Any, Desktop]]:
    """A teacher's deployment gave their one student a (stopped) desktop on this machine."""
    teacher = UserFactory.create(role=Role.TEACHER, username="tess")
    student = UserFactory.create(role=Role.STUDENT, username="sam")
    course = CourseFactory.create(school=teacher.school, name="Exam room")
    MembershipFactory.create(course=course, user=teacher, role=CourseRole.TEACHER)
    MembershipFactory.create(course=course, user=student, role=CourseRole.STUDENT)
    _, desktops = deployment_create(
        actor=teacher, course=course, template=demo_template, name="Exam"
    )
    desktop = Desktop.objects.get(pk=desktops[0].pk)
    try:
        assert desktop.status == DesktopStatus.STOPPED, desktop.status_reason
        yield teacher, desktop
    finally:
        libvirt_driver.undefine_domain(SYSTEM_URI, desktop.domain_name)


def test_chromium_opens_a_direct_link_of_a_stopped_desktop_without_signing_in(
    stopped_exam_desktop: tuple[Any, Desktop], platform_server: AsgiServer, chromium: Any
) -> None:
    teacher, desktop = stopped_exam_desktop
    issued = direct_link_create(actor=teacher, desktop=desktop)

    chromium.get(platform_server.base_url + issued.path)  # no sign-in, no cookie

    status = wait_for_state(chromium, "connected", timeout=120)
    assert status == f"Connected to QEMU ({desktop.domain_name})"
    desktop.refresh_from_db()
    assert desktop.status == DesktopStatus.STARTED
    log = serial_log_path(desktop)
    wait_for(
        lambda: log.exists() and GUEST_READY_MARKER in log.read_text(errors="replace"),
        180,
        "the guest to boot",
    )
    # The canvas is the guest's real screen, as QEMU itself gives it.
    wait_for(lambda: canvas_matches_screen(chromium, desktop) > 0.99, 30, "the canvas")
    ARTIFACTS.mkdir(exist_ok=True)
    chromium.save_screenshot(str(ARTIFACTS / "direct-link-chromium.png"))

    link = DirectLink.objects.get()
    assert link.uses == 1
    token = ViewerToken.objects.get(direct_link=link, used_at__isnull=False)
    assert token.user == desktop.owner and not token.view_only
    history = list(desktop.events.order_by("pk").values_list("reason", flat=True))
    assert any(f"opened through direct link {link.pk} (made by tess)" in r for r in history)
    assert any(f"browser viewer opened through direct link {link.pk}" in r for r in history)
    assert desktop.events.filter(to_status=DesktopStatus.STARTING, actor=teacher).exists()

    # Revoked: the same link now opens nothing, and says nothing more than a made-up one.
    link.revoked_at = link.created_at
    link.save(update_fields=["revoked_at"])
    chromium.delete_all_cookies()
    chromium.get(platform_server.base_url + issued.path)
    state, message = page_state(chromium)
    assert state == "refused" and "does not open anything" in message
