"""Issue 3's proofs on real guests: the qcow2 chain really isolates and really shares."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import pytest

from accounts.choices import Role
from accounts.tests.factories import UserFactory
from desktops.choices import DesktopStatus
from desktops.management.commands.isard_events import apply_event
from desktops.models import Desktop
from desktops.services.domains import serial_log_path
from desktops.services.provisioning import desktop_create
from desktops.services.reconciliation import desktops_reconcile
from desktops.services.recycle_bin import desktop_delete, desktop_purge, desktop_restore
from desktops.services.templating import template_from_desktop
from hypervisors.drivers import libvirt_driver
from isard.core.errors import ConflictError
from templates_app.models import Template
from templates_app.services.templates import template_delete

pytestmark = [pytest.mark.integration, pytest.mark.django_db]

URI = "qemu:///system"


def sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def new_desktop(run: Any, owner: Any, template: Template, name: str) -> Desktop:
    desktop = run(desktop_create, actor=owner, template=template, name=name)
    desktop.refresh_from_db()
    assert desktop.status == DesktopStatus.STOPPED, desktop.status_reason
    return desktop


def make_template(run: Any, teacher: Any, desktop: Desktop, name: str) -> Template:
    template = run(template_from_desktop, actor=teacher, desktop_id=desktop.pk, name=name)
    template.refresh_from_db()
    assert template.status == "ready", template.status_reason
    template.shared_with_everyone = True
    template.save()
    return template


@pytest.fixture
def teacher() -> Any:
    return UserFactory.create(role=Role.TEACHER)


def test_students_see_the_teachers_changes_and_never_each_others(
    run: Any, guests: Any, demo_template: Template, teacher: Any
) -> None:
    # The teacher "installs software": one boot writes to the teacher's own disk.
    teachers = new_desktop(run, teacher, demo_template, "teacher's desktop")
    assert guests.boot(teachers, teacher) == 1
    guests.shut_down(teachers, teacher)
    lesson = make_template(run, teacher, teachers, "Lesson 1")
    lesson_disk = lesson.disk.path  # type: ignore[union-attr]
    lesson_hash = sha256(lesson_disk)

    ana, ben = UserFactory.create(role=Role.STUDENT), UserFactory.create(role=Role.STUDENT)
    anas = new_desktop(run, ana, lesson, "ana's desktop")
    bens = new_desktop(run, ben, lesson, "ben's desktop")
    # (1) both start from the teacher's state: one earlier boot.
    assert guests.boot(anas, ana) == 2
    guests.shut_down(anas, ana)
    # (2) Ana's writes stay on Ana's overlay.
    assert guests.boot(anas, ana) == 3
    guests.shut_down(anas, ana)
    assert guests.boot(bens, ben) == 2
    guests.shut_down(bens, ben)
    assert sha256(lesson_disk) == lesson_hash
    # The teacher goes on working on a fresh overlay above the template.
    teachers.refresh_from_db()
    assert teachers.disk.parent.path == lesson_disk  # type: ignore[union-attr]
    assert guests.boot(teachers, teacher) == 2


def test_a_template_three_levels_deep_boots(
    run: Any, guests: Any, demo_template: Template, teacher: Any
) -> None:
    template = demo_template
    for level in range(1, 4):
        desktop = new_desktop(run, teacher, template, f"level {level}")
        assert guests.boot(desktop, teacher) == level
        guests.shut_down(desktop, teacher)
        template = make_template(run, teacher, desktop, f"Level {level}")
    assert template.disk is not None
    assert template.disk.parent.parent.parent == demo_template.disk  # type: ignore[union-attr]
    student = UserFactory.create(role=Role.STUDENT)
    assert guests.boot(new_desktop(run, student, template, "deep"), student) == 4


def test_deleted_desktop_waits_in_the_bin_restores_and_purges(
    run: Any, guests: Any, demo_template: Template
) -> None:
    student = UserFactory.create(role=Role.STUDENT)
    desktop = new_desktop(run, student, demo_template, "mine")
    assert guests.boot(desktop, student) == 1
    guests.shut_down(desktop, student)
    disk = Path(desktop.disk.path)  # type: ignore[union-attr]

    run(desktop_delete, actor=student, desktop=desktop)
    desktop.refresh_from_db()
    assert desktop.status == DesktopStatus.DELETED
    assert (
        libvirt_driver.domain_state(URI, desktop.domain_name) == libvirt_driver.DomainState.MISSING
    )
    assert disk.exists()

    run(desktop_restore, actor=student, desktop=desktop)
    assert guests.boot(desktop, student) == 2  # the same disk, with its earlier boot
    guests.shut_down(desktop, student)

    run(desktop_delete, actor=student, desktop=desktop)
    desktop.refresh_from_db()
    desktop_purge(desktop=desktop)
    assert not disk.exists()
    assert not Desktop.objects.filter(pk=desktop.pk).exists()


@pytest.mark.usefixtures("guests")  # no guest boots; its teardown undefines the domains
def test_a_template_with_dependants_cannot_be_deleted(
    run: Any, demo_template: Template, teacher: Any
) -> None:
    desktop = new_desktop(run, teacher, demo_template, "lesson prep")
    lesson = make_template(run, teacher, desktop, "Lesson")
    new_desktop(run, UserFactory.create(role=Role.STUDENT), lesson, "student copy")
    with pytest.raises(ConflictError) as refused:
        template_delete(actor=teacher, template=lesson)
    dependants = refused.value.extra["dependants"]
    assert [name.split(" (")[0] for name in dependants["desktops"]] == [
        "lesson prep",
        "student copy",
    ]
    lesson.refresh_from_db()
    assert lesson.status == "ready"
    assert Path(lesson.disk.path).exists()  # type: ignore[union-attr]


# Keys for `virsh send-key`, by character, for typing a line into the guest's shell.
_KEYS = {
    " ": ["KEY_SPACE"],
    "/": ["KEY_SLASH"],
    "-": ["KEY_MINUS"],
    ">": ["KEY_LEFTSHIFT", "KEY_DOT"],
    "\n": ["KEY_ENTER"],
}


def type_into_guest(domain: str, text: str) -> None:
    """Type `text` on the guest's keyboard, as a student at its screen would."""
    for character in text:
        keys = _KEYS.get(character, [f"KEY_{character.upper()}"])
        subprocess.run(["virsh", "-c", URI, "send-key", domain, *keys], check=True)


def test_a_guest_kernel_that_panics_is_reported_as_crashed_at_once_and_starts_again(
    run: Any, guests: Any, demo_template: Template
) -> None:
    """pvpanic: the panic reaches libvirt, the event listener fails the desktop with why."""
    from hypervisors.tests.test_events import Listener

    student = UserFactory.create(role=Role.STUDENT)
    desktop = new_desktop(run, student, demo_template, "mine")
    assert guests.boot(desktop, student) == 1
    listener = Listener()
    listener.thread.start()
    try:
        listener.listen_to(URI)
        # The student crashes the guest's kernel from its shell (a driver bug would do).
        type_into_guest(desktop.domain_name, "echo c > /proc/sysrq-trigger\n")
        listener.heard(desktop.domain_name, "crashed")
    finally:
        listener.stop.set()
        listener.thread.join(timeout=30)
    assert "Kernel panic" in serial_log_path(desktop).read_text(errors="replace")
    crashed = libvirt_driver.DomainState.CRASHED
    assert libvirt_driver.domain_state(URI, desktop.domain_name) == crashed
    # What the event listener does with it (`isard_events`' handler), and the next
    # reconciliation agrees.
    apply_event(URI, desktop.domain_name, libvirt_driver.DomainState.CRASHED)
    desktop.refresh_from_db()
    assert desktop.status == DesktopStatus.FAILED
    assert desktop.status_reason == "its operating system crashed (libvirt event); start it again"
    assert desktop.hypervisor is not None
    desktops_reconcile(hypervisor=desktop.hypervisor)
    desktop.refresh_from_db()
    assert desktop.status == DesktopStatus.FAILED
    # Nothing was lost: the student starts it again on the same disk.
    assert guests.boot(desktop, student) == 2
