"""Template chains, flattening, the recycle bin, and install media, on real qcow2 files."""

from __future__ import annotations

import hashlib
import os
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from accounts.choices import Role
from accounts.tests.factories import UserFactory
from desktops.choices import DesktopStatus
from desktops.services.lifecycle import desktop_start
from desktops.services.provisioning import desktop_create, desktop_create_from_media
from desktops.services.templating import template_from_desktop
from hypervisors import qemu_img
from hypervisors.drivers import libvirt_driver
from hypervisors.paths import PathOutsidePoolsError
from isard.core.errors import ApplicationError, ConflictError, PermissionDeniedError
from templates_app.choices import MediaStatus, TemplateStatus
from templates_app.models import Media, Template
from templates_app.services.flatten import template_flatten
from templates_app.services.media import media_import, media_register
from templates_app.services.templates import (
    template_delete,
    template_restore,
    templates_purge_expired,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def teacher() -> Any:
    return UserFactory.create(role=Role.TEACHER)


@pytest.fixture
def import_folder(settings: Any, tmp_path: Path) -> Path:
    """`tmp_path` as a folder media may be registered from."""
    settings.ISARD_MEDIA_IMPORT_DIRS = [tmp_path]
    return tmp_path


def write_pattern(path: Path, offset: int, length: int) -> None:
    """Write real data into a qcow2 through qemu-io, so copies have something to carry."""
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a {offset} {length}", str(path)],
        check=True,
        capture_output=True,
    )


def test_making_a_template_moves_the_disk_read_only_and_gives_the_desktop_an_overlay(
    run: Any, test_hypervisor: Any, base_template: Any, teacher: Any
) -> None:
    desktop = run(desktop_create, actor=teacher, template=base_template, name="d")
    desktop.refresh_from_db()
    old_disk_path = desktop.disk.path
    template = run(template_from_desktop, actor=teacher, desktop_id=desktop.pk, name="T")
    template.refresh_from_db()
    desktop.refresh_from_db()
    assert template.status == TemplateStatus.READY
    assert template.parent == base_template
    assert (template.disk.read_only and not os.access(template.disk.path, os.W_OK)) or (
        os.stat(template.disk.path).st_mode & 0o777 == 0o444
    )
    assert not Path(old_disk_path).exists()
    assert desktop.status == DesktopStatus.STOPPED
    assert desktop.template == template
    assert desktop.disk.parent == template.disk
    assert qemu_img.info(Path(desktop.disk.path)).backing_file == template.disk.path


def test_only_a_stopped_desktop_becomes_a_template(
    run: Any, test_hypervisor: Any, base_template: Any, teacher: Any
) -> None:
    desktop = run(desktop_create, actor=teacher, template=base_template, name="d")
    desktop.refresh_from_db()
    run(desktop_start, actor=teacher, desktop=desktop)
    with pytest.raises(ConflictError, match="Stop the desktop"):
        template_from_desktop(actor=teacher, desktop_id=desktop.pk, name="T")
    assert not Template.objects.filter(name="T").exists()


def test_students_cannot_make_templates(run: Any, test_hypervisor: Any, base_template: Any) -> None:
    student = UserFactory.create(role=Role.STUDENT)
    desktop = run(desktop_create, actor=student, template=base_template, name="d")
    with pytest.raises(PermissionDeniedError):
        template_from_desktop(actor=student, desktop_id=desktop.pk, name="T")


def test_flatten_makes_a_standalone_copy_of_the_whole_chain_with_progress(
    run: Any, test_hypervisor: Any, base_template: Any, teacher: Any
) -> None:
    desktop = run(desktop_create, actor=teacher, template=base_template, name="d")
    desktop.refresh_from_db()
    write_pattern(Path(desktop.disk.path), 1024 * 1024, 65536)
    lesson = run(template_from_desktop, actor=teacher, desktop_id=desktop.pk, name="L")
    lesson.refresh_from_db()
    flat = run(template_flatten, actor=teacher, template=lesson, name="Flat")
    flat.refresh_from_db()
    assert flat.status == TemplateStatus.READY, flat.status_reason
    assert flat.parent is None and flat.progress_percent == 100
    info = qemu_img.info(Path(flat.disk.path))
    assert info.backing_file is None
    assert info.virtual_size_bytes == lesson.disk.virtual_size_bytes
    # Same guest-visible content as the chain it came from.
    compare = subprocess.run(["qemu-img", "compare", "-q", flat.disk.path, lesson.disk.path])
    assert compare.returncode == 0


def test_deleted_templates_wait_in_the_bin_then_are_purged_with_their_disk(
    base_template: Any, teacher: Any
) -> None:
    base_template.owner = teacher
    base_template.save()
    disk_path = Path(base_template.disk.path)
    template_delete(actor=teacher, template=base_template)
    assert templates_purge_expired() == 0
    assert disk_path.exists()
    template_restore(actor=teacher, template=base_template)
    template_delete(actor=teacher, template=base_template)
    assert templates_purge_expired(now=timezone.now() + timedelta(days=30)) == 1
    assert not disk_path.exists()
    assert not Template.objects.filter(pk=base_template.pk).exists()


def test_media_is_copied_with_its_checksum_and_progress(
    run: Any, pools: Any, teacher: Any, tmp_path: Path, import_folder: Path
) -> None:
    source = tmp_path / "install.iso"
    source.write_bytes(os.urandom(9 * 1024 * 1024 + 123))
    media = run(media_register, actor=teacher, name="Installer", source=source)
    media.refresh_from_db()
    assert media.status == MediaStatus.READY, media.status_reason
    assert media.progress_percent == 100
    assert media.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert Path(media.path).read_bytes() == source.read_bytes()
    assert media.size_bytes == source.stat().st_size


def test_registering_a_missing_file_is_refused(
    pools: Any, teacher: Any, tmp_path: Path, import_folder: Path
) -> None:
    with pytest.raises(ApplicationError, match="no file"):
        media_register(actor=teacher, name="x", source=tmp_path / "none.iso")


def test_a_desktop_from_an_iso_gets_an_empty_disk_and_boots_from_the_cd(
    run: Any, test_hypervisor: Any, teacher: Any, tmp_path: Path, import_folder: Path
) -> None:
    from templates_app.tests.factories import HardwareProfileFactory

    source = tmp_path / "install.iso"
    source.write_bytes(b"\0" * 2048 * 16)
    media = run(media_register, actor=teacher, name="Installer", source=source)
    media.refresh_from_db()
    hardware = HardwareProfileFactory.create(disk_size_gib=8, networks=[])
    desktop = run(
        desktop_create_from_media,
        actor=teacher,
        media=media,
        hardware=hardware,
        name="install",
    )
    desktop.refresh_from_db()
    assert desktop.status == DesktopStatus.STOPPED, desktop.status_reason
    info = qemu_img.info(Path(desktop.disk.path))
    assert info.backing_file is None
    assert info.virtual_size_bytes == 8 * 1024**3
    xml = libvirt_driver.domain_xml("test:///default", desktop.domain_name)
    assert media.path in xml
    assert xml.index("<boot dev='cdrom'/>") < xml.index("<boot dev='hd'/>")


@pytest.mark.parametrize("where", ["/etc/passwd", "outside", "link", "dotdot"])
def test_media_is_registered_only_from_the_media_pool_or_an_import_folder(
    run: Any, pools: Any, teacher: Any, tmp_path: Path, settings: Any, where: str
) -> None:
    folder, outside = tmp_path / "isos", tmp_path / "private"
    folder.mkdir()
    outside.mkdir()
    settings.ISARD_MEDIA_IMPORT_DIRS = [folder]
    secret = outside / "secret.iso"
    secret.write_bytes(b"secret")
    (folder / "link.iso").symlink_to(secret)
    source = {
        "/etc/passwd": Path("/etc/passwd"),
        "outside": secret,
        "link": folder / "link.iso",
        "dotdot": folder / ".." / "private" / "secret.iso",
    }[where]
    with pytest.raises(PathOutsidePoolsError, match="only from the media pool or an import"):
        media_register(actor=teacher, name="x", source=source)
    assert not Media.objects.exists()


def test_media_is_registered_from_an_import_folder_and_from_the_media_pool(
    run: Any, pools: Any, teacher: Any, tmp_path: Path, import_folder: Path
) -> None:
    (import_folder / "a.iso").write_bytes(b"a")
    in_pool = Path(pools["media"].path) / "dropped.iso"
    in_pool.write_bytes(b"b")
    for source in (import_folder / "a.iso", in_pool):
        media = run(media_register, actor=teacher, name=source.name, source=source)
        media.refresh_from_db()
        assert media.status == MediaStatus.READY, media.status_reason
        assert Path(media.path).read_bytes() == source.read_bytes()


def test_the_import_task_refuses_a_source_outside_the_folders(
    run: Any, pools: Any, teacher: Any, tmp_path: Path, import_folder: Path
) -> None:
    source = import_folder / "a.iso"
    source.write_bytes(b"a")
    media = media_register(actor=teacher, name="a", source=source)
    done = media_import(media_id=media.pk, source=Path("/etc/passwd"))
    assert done.status == MediaStatus.FAILED
    assert "is in neither" in done.status_reason
    assert not Path(media.path).exists()


def test_a_cdrom_outside_the_media_pool_fails_the_start_not_the_host(
    run: Any, test_hypervisor: Any, teacher: Any, import_folder: Path
) -> None:
    from templates_app.tests.factories import HardwareProfileFactory

    source = import_folder / "install.iso"
    source.write_bytes(b"\0" * 2048 * 16)
    media = run(media_register, actor=teacher, name="Installer", source=source)
    media.refresh_from_db()
    hardware = HardwareProfileFactory.create(disk_size_gib=1, networks=[])
    desktop = run(
        desktop_create_from_media, actor=teacher, media=media, hardware=hardware, name="i"
    )
    desktop.refresh_from_db()
    assert desktop.status == DesktopStatus.STOPPED, desktop.status_reason
    # Someone with the database's keys points the media at a file of the host.
    Media.objects.filter(pk=media.pk).update(path="/etc/shadow")
    desktop = run(desktop_start, actor=teacher, desktop=desktop)
    desktop.refresh_from_db()
    assert desktop.status == DesktopStatus.FAILED
    assert "/etc/shadow is not inside the storage pools" in desktop.status_reason
    assert "/etc/shadow" not in libvirt_driver.domain_xml(test_hypervisor.uri, desktop.domain_name)
