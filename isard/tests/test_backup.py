"""Backups: a real round trip of database, qcow2 chains and PKI, and the refusals."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from accounts.choices import Role
from accounts.models import User
from accounts.tests.factories import UserFactory
from desktops.choices import DesktopStatus
from desktops.models import Desktop
from desktops.services.lifecycle import desktop_start
from desktops.services.provisioning import desktop_create
from desktops.services.templating import template_from_desktop
from hypervisors import qemu_img
from hypervisors.models import Disk, StoragePool
from isard.backup.services import (
    BackupError,
    backup_create,
    backup_restore,
    flush_database,
    install_is_empty,
)
from templates_app.models import Template

pytestmark = pytest.mark.django_db


def write_pattern(path: Path, pattern: int, offset: int) -> None:
    """Real data in a qcow2 (through qemu-io), so each layer of a chain differs."""
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} {offset} 65536", str(path)],
        check=True,
        capture_output=True,
    )


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class Installation:
    storage_root: Path
    pki_dir: Path
    env_file: Path
    teacher: User
    top_template: Template
    stopped_desktop: Desktop
    running_desktop: Desktop
    disk_sums: dict[str, str]


@pytest.fixture
def installation(
    run: Any,
    test_hypervisor: Any,
    base_template: Any,
    storage_root: Path,
    tmp_path: Path,
    settings: Any,
) -> Installation:
    """A base template, a 2-deep chain of templates on it, a stopped and a running desktop."""
    teacher = UserFactory.create(role=Role.TEACHER, username="teacher1")
    template = base_template
    for level, name in enumerate(("Lesson", "Exam"), start=1):
        desktop = run(desktop_create, actor=teacher, template=template, name=f"maker{level}")
        desktop.refresh_from_db()
        write_pattern(Path(desktop.disk.path), 0x10 + level, level * 65536)
        template = run(template_from_desktop, actor=teacher, desktop_id=desktop.pk, name=name)
        template.refresh_from_db()
    stopped = run(desktop_create, actor=teacher, template=template, name="homework")
    stopped.refresh_from_db()
    write_pattern(Path(stopped.disk.path), 0x77, 0)
    running = run(desktop_create, actor=teacher, template=template, name="live")
    running.refresh_from_db()
    running = run(desktop_start, actor=teacher, desktop=running)
    running.refresh_from_db()
    assert running.status == DesktopStatus.STARTED
    pki_dir = tmp_path / "pki"
    pki_dir.mkdir()
    (pki_dir / "ca.pem").write_text("CERTIFICATE")
    (pki_dir / "ca-key.pem").write_text("KEY")
    (pki_dir / "ca-key.pem").chmod(0o600)
    settings.ISARD_PKI_DIR = pki_dir
    env_file = tmp_path / "install" / ".env"
    env_file.parent.mkdir()
    env_file.write_text("ISARD_PORT=8000\n")
    return Installation(
        storage_root=storage_root,
        pki_dir=pki_dir,
        env_file=env_file,
        teacher=teacher,
        top_template=template,
        stopped_desktop=stopped,
        running_desktop=running,
        disk_sums={disk.path: sha256(disk.path) for disk in Disk.objects.all()},
    )


def wipe(installation: Installation) -> None:
    """A fresh install: an empty migrated database, empty storage, no PKI, no .env."""
    flush_database()
    for child in installation.storage_root.iterdir():
        shutil.rmtree(child)
    shutil.rmtree(installation.pki_dir)
    installation.env_file.unlink()
    assert install_is_empty()


@pytest.mark.parametrize("archive_name", ["backup-dir", "backup.tar"])
def test_a_backup_restores_into_an_empty_install_with_rows_chains_and_pki(
    installation: Installation, run: Any, tmp_path: Path, archive_name: str
) -> None:
    lines: list[str] = []
    archive = tmp_path / archive_name
    result = backup_create(
        out=archive, with_desktops=True, env_file=installation.env_file, say=lines.append
    )
    assert "copying template disks: 3/3" in "\n".join(lines)
    assert any("desktop" in w and "started" in w for w in result.warnings)
    top = installation.top_template
    assert top.disk is not None
    top_path = Path(top.disk.path)
    chain_before = [image.path for image in qemu_img.backing_chain(top_path)]
    assert len(chain_before) == 3
    counts = {
        "users": User.objects.count(),
        "templates": Template.objects.count(),
        "desktops": Desktop.objects.count(),
        "disks": Disk.objects.count(),
        "pools": StoragePool.objects.count(),
    }

    wipe(installation)
    restored = backup_restore(archive=archive, env_file=installation.env_file, say=lines.append)

    assert restored.fresh_overlays == 1  # the running desktop's overlay was not copied
    assert counts == {
        "users": User.objects.count(),
        "templates": Template.objects.count(),
        "desktops": Desktop.objects.count(),
        "disks": Disk.objects.count(),
        "pools": StoragePool.objects.count(),
    }
    assert Template.objects.get(pk=top.pk).name == "Exam"
    assert User.objects.get(username="teacher1").role == Role.TEACHER
    running_disk = Desktop.objects.get(pk=installation.running_desktop.pk).disk
    assert running_disk is not None
    for path, before in installation.disk_sums.items():
        if path != running_disk.path:
            assert sha256(path) == before, path
    assert [image.path for image in qemu_img.backing_chain(top_path)] == chain_before
    fresh = qemu_img.info(Path(running_disk.path))
    assert fresh.backing_file == str(top_path)
    assert (installation.pki_dir / "ca-key.pem").read_text() == "KEY"
    assert (installation.pki_dir / "ca-key.pem").stat().st_mode & 0o777 == 0o600
    assert installation.env_file.read_text() == "ISARD_PORT=8000\n"

    # The restored desktop boots on its restored chain (libvirt's test driver).
    desktop = Desktop.objects.get(pk=installation.stopped_desktop.pk)
    desktop = run(desktop_start, actor=User.objects.get(username="teacher1"), desktop=desktop)
    desktop.refresh_from_db()
    assert desktop.status == DesktopStatus.STARTED
    # The id sequences were moved past the restored rows (PostgreSQL).
    assert UserFactory.create().pk > max(u.pk for u in User.objects.filter(username="teacher1"))


def corrupt_a_disk(archive: Path) -> None:
    if archive.is_dir():
        manifest = json.loads((archive / "manifest.json").read_bytes())
    else:
        with tarfile.open(archive) as tar:
            member = tar.extractfile("manifest.json")
            assert member is not None
            manifest = json.loads(member.read())
    name = next(f["name"] for f in manifest["files"] if f["kind"] == "template-disk")
    if archive.is_dir():
        offset, target = 100, archive / name
    else:
        with tarfile.open(archive) as tar:
            offset, target = tar.getmember(name).offset_data + 100, archive
    with target.open("r+b") as file:
        file.seek(offset)
        byte = file.read(1)
        file.seek(offset)
        file.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("archive_name", ["backup-dir", "backup.tar"])
def test_a_corrupted_archive_is_refused_before_anything_is_written(
    installation: Installation, tmp_path: Path, archive_name: str
) -> None:
    archive = tmp_path / archive_name
    backup_create(out=archive, env_file=installation.env_file)
    corrupt_a_disk(archive)
    wipe(installation)
    with pytest.raises(BackupError, match="does not match its sha256"):
        backup_restore(archive=archive, env_file=installation.env_file)
    assert install_is_empty()
    assert not any(installation.storage_root.rglob("*.qcow2"))
    assert not installation.pki_dir.exists()
    assert not installation.env_file.exists()


def test_a_member_the_manifest_does_not_list_is_refused(
    installation: Installation, tmp_path: Path
) -> None:
    archive = tmp_path / "backup"
    backup_create(out=archive, env_file=installation.env_file)
    (archive / "disks" / "extra.qcow2").write_bytes(b"x")
    wipe(installation)
    with pytest.raises(BackupError, match="does not list"):
        backup_restore(archive=archive, env_file=installation.env_file)
    assert install_is_empty()


def test_a_non_empty_install_is_refused_without_force(
    installation: Installation, tmp_path: Path
) -> None:
    archive = tmp_path / "backup"
    backup_create(out=archive, env_file=installation.env_file)
    Template.objects.filter(pk=installation.top_template.pk).update(name="Changed")
    with pytest.raises(BackupError, match="not empty"):
        backup_restore(archive=archive, env_file=installation.env_file)
    assert Template.objects.get(pk=installation.top_template.pk).name == "Changed"

    backup_restore(archive=archive, env_file=installation.env_file, force=True)
    assert Template.objects.get(pk=installation.top_template.pk).name == "Exam"


def test_an_archive_from_another_storage_root_is_refused(
    installation: Installation, tmp_path: Path, settings: Any
) -> None:
    archive = tmp_path / "backup"
    backup_create(out=archive, env_file=installation.env_file)
    wipe(installation)
    settings.ISARD_STORAGE_ROOT = tmp_path / "elsewhere"
    with pytest.raises(BackupError, match="storage root"):
        backup_restore(archive=archive, env_file=installation.env_file)
    assert install_is_empty()


def test_a_chain_reaching_outside_the_pools_is_not_copied(
    installation: Installation, tmp_path: Path
) -> None:
    outside = tmp_path / "secret.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(outside), "1M"], check=True)
    disk = installation.top_template.disk
    assert disk is not None
    Path(disk.path).chmod(0o644)
    subprocess.run(
        ["qemu-img", "rebase", "-u", "-b", str(outside), "-F", "qcow2", disk.path], check=True
    )
    archive = tmp_path / "backup"
    with pytest.raises(BackupError, match="outside the storage pools"):
        backup_create(out=archive, env_file=installation.env_file)
    assert not archive.exists()


def test_the_commands_print_progress_and_refuse_in_one_line(
    installation: Installation, tmp_path: Path, settings: Any
) -> None:
    settings.BASE_DIR = installation.env_file.parent
    archive = tmp_path / "backup.tar"
    out = io.StringIO()
    call_command("isard_backup", "--out", str(archive), stdout=out)
    assert "copying template disks: 3/3," in out.getvalue()
    assert "backup written to" in out.getvalue()
    with pytest.raises(CommandError, match="not empty"):
        call_command("isard_restore", str(archive), stdout=io.StringIO())
    wipe(installation)
    out = io.StringIO()
    call_command("isard_restore", str(archive), stdout=out)
    assert "restoring disks: 3/3" in out.getvalue()
    assert Template.objects.filter(name="Exam").exists()


@pytest.mark.django_db(transaction=True)
def test_the_database_is_read_in_one_transaction_of_its_own(
    pools: Any, tmp_path: Path, settings: Any
) -> None:
    settings.ISARD_PKI_DIR = tmp_path / "no-pki"
    UserFactory.create(username="alone")
    archive = tmp_path / "backup"
    result = backup_create(out=archive, env_file=tmp_path / "no.env")
    rows = json.loads((archive / "database.json").read_bytes())
    assert [row["fields"]["username"] for row in rows if row["model"] == "accounts.user"] == [
        "alone"
    ]
    assert any("no PKI directory" in warning for warning in result.warnings)
    manifest = json.loads((archive / "manifest.json").read_bytes())
    assert manifest["format_version"] == 1 and manifest["platform_version"]
    assert manifest["counts"]["rows"]["accounts.user"] == 1
    for entry in manifest["files"]:
        assert sha256(archive / entry["name"]) == entry["sha256"]


def test_a_template_still_being_made_is_not_copied_and_a_missing_disk_stops_the_backup(
    installation: Installation, tmp_path: Path
) -> None:
    top = installation.top_template
    assert top.disk is not None
    Template.objects.filter(pk=top.pk).update(status="creating")
    result = backup_create(out=tmp_path / "one", env_file=installation.env_file)
    assert f"template {top.pk} is creating: its disk is not copied" in result.warnings
    manifest = json.loads((tmp_path / "one" / "manifest.json").read_bytes())
    assert top.disk.path not in [entry.get("path") for entry in manifest["files"]]

    Template.objects.filter(pk=top.pk).update(status="ready")
    Path(top.disk.path).unlink()
    with pytest.raises(BackupError, match="cannot read the chain"):
        backup_create(out=tmp_path / "two", env_file=installation.env_file)
    assert not (tmp_path / "two").exists()
