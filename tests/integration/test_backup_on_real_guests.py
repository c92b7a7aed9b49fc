"""Issue 20's backup proof on a real guest: restore into an empty install, boot from it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from accounts.choices import Role
from accounts.models import User
from accounts.tests.factories import UserFactory
from desktops.choices import DesktopStatus
from desktops.models import Desktop
from desktops.services.domains import serial_log_path
from desktops.services.provisioning import desktop_create
from desktops.services.templating import template_from_desktop
from hypervisors.drivers import libvirt_driver
from hypervisors.guest_image import GUEST_READY_MARKER
from isard.backup.services import backup_create, backup_restore, flush_database
from templates_app.models import Template

pytestmark = [pytest.mark.integration, pytest.mark.django_db]

URI = "qemu:///system"


def test_a_desktop_boots_from_a_template_restored_into_an_empty_install(
    run: Any, guests: Any, demo_template: Template, storage_root: Path, tmp_path: Path
) -> None:
    teacher = UserFactory.create(role=Role.TEACHER, username="teacher")
    making = run(desktop_create, actor=teacher, template=demo_template, name="making")
    assert guests.boot(making, teacher) == 1  # the guest writes its boot count to its disk
    guests.shut_down(making, teacher)
    lesson = run(template_from_desktop, actor=teacher, desktop_id=making.pk, name="Lesson")
    lesson.refresh_from_db()
    Template.objects.filter(pk=lesson.pk).update(shared_with_everyone=True)

    archive = tmp_path / "backup.tar"
    backup_create(out=archive, env_file=tmp_path / "no.env")

    # A fresh install on the same host: no domains, an empty database, empty storage.
    for desktop in Desktop.objects.all():
        libvirt_driver.undefine_domain(URI, desktop.domain_name)
    flush_database()
    for child in storage_root.iterdir():
        shutil.rmtree(child)

    backup_restore(archive=archive, env_file=tmp_path / "no.env")

    student = UserFactory.create(role=Role.STUDENT)
    restored = Template.objects.get(name="Lesson")
    desktop = run(desktop_create, actor=student, template=restored, name="after restore")
    desktop.refresh_from_db()
    assert desktop.status == DesktopStatus.STOPPED, desktop.status_reason
    # One boot came with the restored template (the teacher's); this is the second.
    assert guests.boot(desktop, student) == 2
    assert GUEST_READY_MARKER in serial_log_path(desktop).read_text(errors="replace")
    assert User.objects.filter(username="teacher").exists()
