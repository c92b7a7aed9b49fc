"""Back up and restore an installation: database, template disk chains, PKI, settings.

Consistency while the platform runs: the database is read in one transaction (REPEATABLE
READ on PostgreSQL, one read transaction on SQLite), and the disks copied are those that
snapshot names. Template disks are read-only once ready, so copying them while desktops
run on them is safe. A desktop's overlay changes while it runs, so only stopped desktops'
overlays are copied (`with_desktops`); a running one is skipped with a warning, and one
that started during its copy is marked discarded. On restore, a desktop whose overlay is
not in the archive gets a fresh overlay on its template: it comes back as new.

Files go back to the same absolute paths, so a restore needs the same storage root
(`ISARD_STORAGE_ROOT`); an archive from another root is refused rather than rewritten.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.management import call_command
from django.db import connection, transaction
from django.utils import timezone

from desktops.choices import DesktopStatus
from desktops.models import Desktop
from hypervisors import qemu_img
from hypervisors.models import Disk, StoragePool
from hypervisors.paths import PathOutsidePoolsError, path_inside, resolved
from isard.backup.archive import (
    MANIFEST_NAME,
    ArchiveError,
    ArchiveReader,
    hash_stream,
    open_writer,
    remove_partial_archive,
    write_file,
)
from templates_app.choices import TemplateStatus
from templates_app.models import Template

FORMAT_VERSION = 1
DATABASE_MEMBER = "database.json"
#: Rebuilt by `migrate` in every install (and referenced by natural keys in the dump).
EXCLUDED_MODELS = ["contenttypes", "auth.permission", "sessions"]
#: The apps whose rows make an install "not empty".
OWN_APPS = ("accounts", "hypervisors", "templates_app", "desktops")
#: A desktop in these states has no guest writing its overlay.
QUIESCENT_DESKTOP_STATUSES = frozenset(
    {DesktopStatus.STOPPED, DesktopStatus.FAILED, DesktopStatus.DELETED}
)
#: Templates whose disk is final and read-only (the recycle bin's can be restored).
COPIED_TEMPLATE_STATUSES = frozenset({TemplateStatus.READY, TemplateStatus.DELETED})
PROGRESS_EVERY_BYTES = 512 * 1024 * 1024

Say = Callable[[str], None]


def _quiet(line: str) -> None:
    pass


def format_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


class BackupError(ArchiveError):
    """A backup or restore that cannot go on; nothing (more) was written."""


@dataclass
class _Progress:
    """Prints `copying template disks: 3/7, 1.2 GiB of 4.0 GiB` as files are copied."""

    label: str
    files_total: int
    bytes_total: int
    say: Say
    files_done: int = 0
    bytes_done: int = 0
    _since_line: int = 0

    def line(self) -> None:
        self.say(
            f"{self.label}: {self.files_done}/{self.files_total}, "
            f"{format_bytes(self.bytes_done)} of {format_bytes(self.bytes_total)}"
        )

    def on_bytes(self, count: int) -> None:
        self.bytes_done += count
        self._since_line += count
        if self._since_line >= PROGRESS_EVERY_BYTES:
            self._since_line = 0
            self.line()

    def file_done(self) -> None:
        self.files_done += 1
        self._since_line = 0
        self.line()


@dataclass(frozen=True)
class BackupResult:
    out: Path
    files: int
    bytes: int
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RestoreResult:
    rows: int
    disks: int
    fresh_overlays: int
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _DiskToCopy:
    path: Path
    role: str  # "template" or "desktop"
    backing: str | None
    desktop_id: int | None = None
    desktop_status_changed_at: str | None = None


def _platform_revision() -> str:
    try:
        completed = subprocess.run(
            ["git", "-C", str(settings.BASE_DIR), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return completed.stdout.strip() if completed.returncode == 0 else ""


def _platform_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("isard")
    except PackageNotFoundError:  # run from a checkout, not installed
        try:
            with (Path(settings.BASE_DIR) / "pyproject.toml").open("rb") as file:
                return str(tomllib.load(file)["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return ""


def _snapshot_database(
    dump_path: Path,
) -> tuple[list[tuple[int, str, str]], list[Desktop]]:
    """Dump every row, and read which disks that dump names, in one consistent read."""
    outermost = not connection.in_atomic_block
    with transaction.atomic():
        # Inside a caller's transaction (tests) the snapshot is that transaction's.
        if connection.vendor == "postgresql" and outermost:
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        call_command(
            "dumpdata",
            exclude=EXCLUDED_MODELS,
            natural_foreign=True,
            use_base_manager=True,
            output=str(dump_path),
            verbosity=0,
        )
        templates = list(
            Template.objects.exclude(disk=None)
            .order_by("pk")
            .values_list("pk", "status", "disk__path")
        )
        desktops = list(Desktop.objects.exclude(disk=None).select_related("disk").order_by("pk"))
    return templates, desktops


def _chain(path: Path, pools: tuple[Path, ...]) -> list[qemu_img.ImageInfo]:
    """The disk and its backing files, every one inside the pools (else refused)."""
    try:
        chain = qemu_img.backing_chain(path)
    except qemu_img.QemuImgError as error:
        raise BackupError(f"cannot read the chain of {path}: {error}; the backup stops.") from error
    for image in chain:
        try:
            path_inside(image.path, pools)
        except PathOutsidePoolsError as error:
            raise BackupError(
                f"{image.path} (in the chain of {path}) is outside the storage pools; "
                "it is not copied and the backup stops."
            ) from error
    return chain


def _desktop_still_quiescent(desktop_id: int, status_changed_at: str) -> bool:
    current = Desktop.objects.filter(pk=desktop_id).values("status", "status_changed_at").first()
    return (
        current is not None
        and current["status"] in QUIESCENT_DESKTOP_STATUSES
        and current["status_changed_at"].isoformat() == status_changed_at
    )


def backup_create(
    *,
    out: Path,
    with_desktops: bool = False,
    pki_dir: Path | None = None,
    env_file: Path | None = None,
    say: Say = _quiet,
) -> BackupResult:
    """Write one archive (a directory, or a `.tar` if `out` ends so) of this installation.

    The manifest, written last, lists every member with its sha256; `isard_restore`
    refuses an archive whose members do not match it.
    """
    pki_dir = Path(settings.ISARD_PKI_DIR if pki_dir is None else pki_dir)
    env_file = Path(settings.BASE_DIR / ".env" if env_file is None else env_file)
    out = Path(out)
    warnings: list[str] = []

    def warn(line: str) -> None:
        warnings.append(line)
        say(f"warning: {line}")

    writer = open_writer(out)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            dump_path = Path(scratch) / DATABASE_MEMBER
            say("reading the database")
            templates, desktops = _snapshot_database(dump_path)
            pools = tuple(Path(p) for p in StoragePool.objects.values_list("path", flat=True))
            files: list[dict[str, Any]] = []
            database = writer.add_file(DATABASE_MEMBER, dump_path)
            rows = json.loads(dump_path.read_bytes())
            files.append({"name": database.name, "kind": "database", **_sums(database)})

            to_copy: dict[str, _DiskToCopy] = {}
            for template_id, status, disk_path in templates:
                if status not in COPIED_TEMPLATE_STATUSES:
                    # Its disk may still be moving (a desktop becoming a template).
                    warn(f"template {template_id} is {status}: its disk is not copied")
                    continue
                for image in _chain(Path(disk_path), pools):
                    to_copy.setdefault(
                        image.path,
                        _DiskToCopy(Path(image.path), role="template", backing=image.backing_file),
                    )
            if with_desktops:
                for desktop in desktops:
                    assert desktop.disk is not None
                    if desktop.status not in QUIESCENT_DESKTOP_STATUSES:
                        warn(
                            f"desktop {desktop.pk} is {desktop.status}: its overlay is not "
                            "copied (stop it for a consistent copy); it restores as new"
                        )
                        continue
                    top, *below = _chain(Path(desktop.disk.path), pools)
                    to_copy[top.path] = _DiskToCopy(
                        Path(top.path),
                        role="desktop",
                        backing=top.backing_file,
                        desktop_id=desktop.pk,
                        desktop_status_changed_at=desktop.status_changed_at.isoformat(),
                    )
                    for image in below:
                        to_copy.setdefault(
                            image.path,
                            _DiskToCopy(
                                Path(image.path), role="template", backing=image.backing_file
                            ),
                        )

            for role, label in (("template", "template disks"), ("desktop", "desktop overlays")):
                disks = [disk for disk in to_copy.values() if disk.role == role]
                if not disks:
                    continue
                progress = _Progress(
                    label=f"copying {label}",
                    files_total=len(disks),
                    bytes_total=sum(disk.path.stat().st_size for disk in disks),
                    say=say,
                )
                for index, disk in enumerate(disks, start=1):
                    member = writer.add_file(
                        f"disks/{index:05d}-{role}-{disk.path.name}", disk.path, progress.on_bytes
                    )
                    kind = f"{role}-disk"
                    if disk.desktop_id is not None and not _desktop_still_quiescent(
                        disk.desktop_id, disk.desktop_status_changed_at or ""
                    ):
                        warn(
                            f"desktop {disk.desktop_id} started while its overlay was copied: "
                            "that copy is discarded; it restores as new"
                        )
                        kind = "discarded"
                    files.append(
                        {
                            "name": member.name,
                            "kind": kind,
                            "path": str(disk.path),
                            "backing": disk.backing,
                            "mode": disk.path.stat().st_mode & 0o777,
                            **_sums(member),
                        }
                    )
                    progress.file_done()

            if pki_dir.is_dir():
                pki_files = sorted(p for p in pki_dir.rglob("*") if p.is_file())
                for path in pki_files:
                    relative = path.relative_to(pki_dir).as_posix()
                    member = writer.add_file(f"pki/{relative}", path)
                    files.append(
                        {
                            "name": member.name,
                            "kind": "pki",
                            "path": relative,
                            "mode": path.stat().st_mode & 0o777,
                            **_sums(member),
                        }
                    )
                say(f"PKI: {len(pki_files)} files")
            else:
                warn(f"no PKI directory at {pki_dir}")
            if env_file.is_file():
                member = writer.add_file("env/.env", env_file)
                files.append(
                    {
                        "name": member.name,
                        "kind": "env",
                        "mode": env_file.stat().st_mode & 0o777,
                        **_sums(member),
                    }
                )
                say("settings: .env")

            counts: dict[str, int] = {}
            for row in rows:
                counts[row["model"]] = counts.get(row["model"], 0) + 1
            manifest = {
                "format_version": FORMAT_VERSION,
                "platform_version": _platform_version(),
                "platform_revision": _platform_revision(),
                "created_at": timezone.now().astimezone(UTC).isoformat(),
                "database_vendor": connection.vendor,
                "storage_root": str(resolved(settings.ISARD_STORAGE_ROOT)),
                "with_desktops": with_desktops,
                "counts": {
                    "rows": counts,
                    "template_disks": sum(1 for f in files if f["kind"] == "template-disk"),
                    "desktop_overlays": sum(1 for f in files if f["kind"] == "desktop-disk"),
                },
                "warnings": warnings,
                "files": files,
            }
            writer.add_bytes(MANIFEST_NAME, json.dumps(manifest, indent=2).encode())
        writer.close()
    except BaseException:
        writer.close()
        remove_partial_archive(out)
        raise
    total = sum(f["size_bytes"] for f in files)
    say(f"backup written to {out}: {len(files)} files, {format_bytes(total)}")
    return BackupResult(out=out, files=len(files), bytes=total, warnings=warnings)


def _sums(member: Any) -> dict[str, Any]:
    return {"size_bytes": member.size_bytes, "sha256": member.sha256}


def install_is_empty() -> bool:
    """No row in any of the platform's own tables (a freshly migrated database)."""
    for app_label in OWN_APPS:
        for model in apps.get_app_config(app_label).get_models():
            if model._base_manager.exists():
                return False
    return True


def _read_manifest(reader: ArchiveReader) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads(reader.read_bytes(MANIFEST_NAME))
    except ValueError as error:
        raise BackupError("the archive's manifest is not valid JSON; refused.") from error
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BackupError(
            f"archive format {manifest.get('format_version')!r} is not {FORMAT_VERSION}; refused."
        )
    return manifest


def backup_verify(*, archive: Path, say: Say = _quiet) -> dict[str, Any]:
    """Check every member against the manifest's sha256 (and nothing extra); the manifest."""
    reader = ArchiveReader(Path(archive))
    manifest = _read_manifest(reader)
    expected = {entry["name"]: entry for entry in manifest["files"]}
    seen: set[str] = set()
    progress = _Progress(
        label="verifying",
        files_total=len(expected),
        bytes_total=sum(entry["size_bytes"] for entry in expected.values()),
        say=say,
    )
    for name, content in reader.members():
        if name == MANIFEST_NAME:
            continue
        entry = expected.get(name)
        if entry is None:
            raise BackupError(
                f"the archive holds {name}, which its manifest does not list; refused."
            )
        sha256, size = hash_stream(content)
        progress.on_bytes(size)
        if sha256 != entry["sha256"] or size != entry["size_bytes"]:
            raise BackupError(f"{name} does not match its sha256 in the manifest; refused.")
        seen.add(name)
        progress.file_done()
    missing = sorted(set(expected) - seen)
    if missing:
        raise BackupError(f"the archive lacks {missing[0]} (and {len(missing) - 1} more); refused.")
    return manifest


def flush_database() -> None:
    """Empty every table (`manage.py flush`), even inside a transaction with pending checks."""
    if connection.vendor == "postgresql":
        # PostgreSQL will not TRUNCATE a table with deferred foreign-key checks pending.
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    call_command("flush", interactive=False, verbosity=0)
    if connection.vendor == "postgresql":
        # Back to Django's default, so loaddata may insert rows before those they name.
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL DEFERRED")


def _archived_pools(database_rows: Iterable[dict[str, Any]]) -> tuple[Path, ...]:
    return tuple(
        Path(row["fields"]["path"])
        for row in database_rows
        if row["model"] == "hypervisors.storagepool"
    )


def backup_restore(
    *,
    archive: Path,
    force: bool = False,
    pki_dir: Path | None = None,
    env_file: Path | None = None,
    say: Say = _quiet,
) -> RestoreResult:
    """Restore an archive into this install, whose database is migrated and empty.

    Everything is checked before anything is written: every sha256, an empty database
    (unless `force`: then the database is flushed first), the same storage root, every
    disk path inside the archived pools and not already taken (unless `force`).
    """
    pki_dir = Path(settings.ISARD_PKI_DIR if pki_dir is None else pki_dir)
    env_file = Path(settings.BASE_DIR / ".env" if env_file is None else env_file)
    archive = Path(archive)
    reader = ArchiveReader(archive)
    # The quick refusals first, before hashing what may be many gigabytes.
    if not force and not install_is_empty():
        raise BackupError(
            "this install's database is not empty; restore into a freshly migrated one, "
            "or pass --force to replace everything in it."
        )
    here = str(resolved(settings.ISARD_STORAGE_ROOT))
    archived_root = _read_manifest(reader)["storage_root"]
    if archived_root != here:
        raise BackupError(
            f"the archive's disks lived under {archived_root}, this install's "
            f"storage root is {here}; set ISARD_STORAGE_ROOT to the archive's to restore."
        )
    manifest = backup_verify(archive=archive, say=say)
    database_bytes = reader.read_bytes(DATABASE_MEMBER)
    rows = json.loads(database_bytes)
    pools = _archived_pools(rows)
    disks = [entry for entry in manifest["files"] if entry["kind"].endswith("-disk")]
    for entry in disks:
        try:
            path_inside(entry["path"], pools)
        except PathOutsidePoolsError as error:
            raise BackupError(
                f"{entry['path']} is outside the archive's pools; refused."
            ) from error
        if not force and Path(entry["path"]).exists():
            raise BackupError(f"{entry['path']} already exists; refused (--force replaces it).")
    for entry in manifest["files"]:
        if entry["kind"] == "pki":
            path_inside(pki_dir / entry["path"], [pki_dir])

    with tempfile.TemporaryDirectory() as scratch:
        dump_path = Path(scratch) / DATABASE_MEMBER
        dump_path.write_bytes(database_bytes)
        say(f"loading the database: {len(rows)} rows")
        with transaction.atomic():
            if force:
                flush_database()
            call_command("loaddata", str(dump_path), verbosity=0)

    by_name = {entry["name"]: entry for entry in disks}
    progress = _Progress(
        label="restoring disks",
        files_total=len(disks),
        bytes_total=sum(entry["size_bytes"] for entry in disks),
        say=say,
    )
    others = [e for e in manifest["files"] if e["kind"] in ("pki", "env")]
    for name, content in reader.members():
        entry = by_name.get(name)
        if entry is None:
            continue
        target = Path(entry["path"])
        for directory in reversed(target.parents):
            if directory in pools or any(directory.is_relative_to(pool) for pool in pools):
                directory.mkdir(parents=True, exist_ok=True)
                directory.chmod(0o755)  # qemu runs as its own user and must reach the files
        write_file(content, target, mode=entry["mode"], on_bytes=progress.on_bytes)
        progress.file_done()

    fresh = _recreate_missing_overlays(pools, say)
    warnings: list[str] = []
    for entry in others:
        with reader.open(entry["name"]) as content:
            if entry["kind"] == "pki":
                write_file(content, pki_dir / entry["path"], mode=entry["mode"], on_bytes=None)
            else:
                target = env_file
                if env_file.exists():
                    target = env_file.with_name(".env.from-backup")
                write_file(content, target, mode=entry["mode"], on_bytes=None)
                if target != env_file:
                    warnings.append(
                        f"{env_file} exists: the archive's settings are in {target}; compare them"
                    )
                    say(f"warning: {warnings[-1]}")
    if any(entry["kind"] == "pki" for entry in others):
        say(f"PKI restored into {pki_dir}")
    say(f"restored {len(rows)} rows, {len(disks)} disks, {fresh} fresh desktop overlays")
    return RestoreResult(rows=len(rows), disks=len(disks), fresh_overlays=fresh, warnings=warnings)


def _recreate_missing_overlays(pools: tuple[Path, ...], say: Say) -> int:
    """Desktops whose overlay is not in the archive start again from their template."""
    made = 0
    for disk in Disk.objects.filter(desktops__isnull=False).select_related("parent").distinct():
        path = Path(disk.path)
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if disk.parent is not None:
            qemu_img.create_overlay(
                path, Path(disk.parent.path), storage_pools=pools, backing_format=disk.parent.format
            )
        else:
            qemu_img.create_empty(path, disk.virtual_size_bytes, storage_pools=pools)
        os.chmod(path, 0o644)
        made += 1
    if made:
        say(f"{made} desktops had no overlay in the archive: they restart from their template")
    return made
