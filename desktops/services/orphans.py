"""What is left behind: domains no live desktop owns, and files in the pools no row names.

A libvirt call given up on (a hung daemon, `ISARD_LIBVIRT_CALL_TIMEOUT_SECONDS`) may still
happen when the daemon answers again: a class's defines that timed out then leave domains
for desktops that failed, or that a teacher has since recreated. The reconciliation finds
the domains of ours (`isard-<uuid>`) whose desktop is in the recycle bin, failed before it
ever had a disk, or is unknown to the database (then only if this installation defined
it: its identity is in each domain's metadata), and undefines them once they have been
seen so for `ISARD_ORPHAN_GRACE_SECONDS` (a define in flight is not an orphan). Undefining
never touches a disk. A running guest is never removed: it is logged for an administrator.

Files are only reported (`orphan_files`, the admin's storage pools, `manage.py
isard_orphans`); removing them takes an administrator's confirmation.
"""

from __future__ import annotations

import logging
import uuid as uuid_module
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone
from redis.exceptions import RedisError

from desktops.choices import DesktopStatus
from desktops.models import Desktop
from desktops.services.transitions import desktop_event_record
from hypervisors.drivers import libvirt_driver
from hypervisors.models import Disk, Hypervisor, HypervisorEvent, StoragePool
from hypervisors.selectors import installation_uuid
from templates_app.choices import MediaStatus
from templates_app.models import Media

logger = logging.getLogger(__name__)

S = DesktopStatus

#: How long one call of the sweep waits for a host's libvirt.
ORPHAN_LIBVIRT_TIMEOUT_SECONDS = 10.0


def orphan_grace() -> timedelta:
    return timedelta(seconds=settings.ISARD_ORPHAN_GRACE_SECONDS)


@dataclass(frozen=True)
class OrphanDomain:
    """A domain of ours on a host that no live desktop owns, and why."""

    name: str
    state: libvirt_driver.DomainState
    desktop: Desktop | None
    why: str


def _uuid_of(name: str) -> uuid_module.UUID | None:
    if not name.startswith(libvirt_driver.DOMAIN_PREFIX):
        return None
    try:
        return uuid_module.UUID(name.removeprefix(libvirt_driver.DOMAIN_PREFIX))
    except ValueError:
        return None  # a name of ours in form only (a probe's, a benchmark's)


def _defined_here(hypervisor: Hypervisor, name: str) -> bool:
    """Whether this installation defined the domain (its metadata says which one did)."""
    try:
        metadata = libvirt_driver.domain_isard_metadata(
            hypervisor.uri, name, timeout=ORPHAN_LIBVIRT_TIMEOUT_SECONDS
        )
    except libvirt_driver.DriverError:
        return False
    return metadata.get("installation") == installation_uuid()


def domains_orphaned(
    *, hypervisor: Hypervisor, states: dict[str, libvirt_driver.DomainState]
) -> list[OrphanDomain]:
    """The domains in `states` (one host's) that no live desktop owns.

    A domain whose desktop this database does not know counts only if this installation
    defined it: another installation on the same libvirt (or a test run) owns its own.
    """
    by_uuid = {found: name for name in states if (found := _uuid_of(name)) is not None}
    desktops = {desktop.uuid: desktop for desktop in Desktop.objects.filter(uuid__in=by_uuid)}
    orphans = []
    for found, name in by_uuid.items():
        desktop = desktops.get(found)
        if desktop is None:
            if not _defined_here(hypervisor, name):
                continue
            why = "no desktop has it"
        elif desktop.status == S.DELETED:
            why = "its desktop is in the recycle bin"
        elif desktop.status == S.FAILED and desktop.disk_id is None:
            why = "its desktop failed before it had a disk"
        else:
            continue
        orphans.append(OrphanDomain(name, states[name], desktop, why))
    return orphans


def _first_seen_key(hypervisor: Hypervisor, name: str) -> str:
    return f"orphan-domain:{hypervisor.pk}:{name}"


def domains_remove_orphans(
    *,
    hypervisor: Hypervisor,
    states: dict[str, libvirt_driver.DomainState],
    now: datetime | None = None,
) -> int:
    """Undefine the host's orphan domains seen for longer than the grace; how many went.

    When a domain was first seen orphaned is kept in the cache (Redis): without it the
    sweep removes nothing, and a Redis restarted without persistence restarts the grace.
    """
    now = now or timezone.now()
    removed = 0
    for orphan in domains_orphaned(hypervisor=hypervisor, states=states):
        if orphan.state in (libvirt_driver.DomainState.RUNNING, libvirt_driver.DomainState.PAUSED):
            logger.error(
                "%s runs on %s but %s: left for an administrator",
                orphan.name,
                hypervisor.name,
                orphan.why,
            )
            continue
        key = _first_seen_key(hypervisor, orphan.name)
        try:
            first_seen = cache.get_or_set(key, now.timestamp(), timeout=None)
        except RedisError as error:
            logger.warning(
                "orphan domains on %s left: the cache does not answer (%s)", hypervisor.name, error
            )
            return removed
        if now.timestamp() - float(first_seen or now.timestamp()) < orphan_grace().total_seconds():
            continue
        try:
            libvirt_driver.undefine_domain(
                hypervisor.uri, orphan.name, timeout=ORPHAN_LIBVIRT_TIMEOUT_SECONDS
            )
        except libvirt_driver.DriverError as error:
            logger.warning(
                "could not remove orphan %s on %s: %s", orphan.name, hypervisor.name, error
            )
            continue
        cache.delete(key)
        removed += 1
        message = f"removed the domain {orphan.name} left on {hypervisor.name}: {orphan.why}"
        logger.info("%s", message)
        if orphan.desktop is not None:
            desktop_event_record(orphan.desktop, message)
        else:
            HypervisorEvent.objects.create(hypervisor=hypervisor, message=message)
    return removed


@dataclass(frozen=True)
class OrphanFile:
    """A file in a storage pool that no disk or media row names."""

    path: Path
    size_bytes: int
    modified_at: datetime


def _named_paths() -> set[str]:
    named = set(Disk.objects.values_list("path", flat=True))
    for path, status in Media.objects.values_list("path", "status"):
        named.add(path)
        if status in (MediaStatus.UPLOADING, MediaStatus.VERIFYING, MediaStatus.COPYING):
            named.add(f"{path}.part")  # an upload or a copy in progress writes beside it
    return named


def orphan_files(
    *, pools: Iterable[StoragePool] | None = None, now: datetime | None = None
) -> list[OrphanFile]:
    """Files in the pools' directories that no row names, older than the grace.

    The grace covers a file made just before its row commits (media being copied, a
    probe's work directory is a directory and never listed). Sub-directories are not
    walked: the platform keeps its disks at the top of each pool.
    """
    now = now or timezone.now()
    limit = (now - orphan_grace()).timestamp()
    named = _named_paths()
    found: list[OrphanFile] = []
    for pool in pools if pools is not None else StoragePool.objects.order_by("name"):
        directory = Path(pool.path)
        try:
            entries = list(directory.iterdir())
        except OSError:
            continue  # a pool not mounted here: `/health/` says so elsewhere
        for entry in entries:
            try:
                status = entry.lstat()
            except OSError:
                continue
            if not entry.is_file() or entry.is_symlink() or str(entry) in named:
                continue
            if entry.name.startswith(".") or status.st_mtime > limit:
                continue
            found.append(
                OrphanFile(
                    path=entry,
                    size_bytes=status.st_blocks * 512,
                    modified_at=datetime.fromtimestamp(status.st_mtime, tz=UTC),
                )
            )
    return sorted(found, key=lambda orphan: str(orphan.path))


def orphan_files_remove(*, files: Iterable[OrphanFile]) -> int:
    """Remove the given orphan files, each checked again first (a row may name it now)."""
    named = _named_paths()
    removed = 0
    for orphan in files:
        if str(orphan.path) in named:
            continue
        try:
            orphan.path.unlink()
        except FileNotFoundError:
            continue
        removed += 1
        logger.info("removed the orphan file %s", str(orphan.path))
    return removed
