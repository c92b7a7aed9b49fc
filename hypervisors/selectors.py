"""Reads about hosts and storage that more than one caller needs."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from django.db.models import Count, Sum

from hypervisors.choices import PoolPurpose
from hypervisors.fleet import fleet_settings
from hypervisors.models import (
    Hypervisor,
    Installation,
    PlacementCharge,
    StoragePool,
)


@dataclass(frozen=True)
class LiveCharge:
    hypervisor_id: int
    desktop_id: int | None
    memory_mib: int
    vcpus: int


def live_charges(
    *, hypervisors: Iterable[Hypervisor], now: datetime, exclude_desktop_ids: Collection[int] = ()
) -> list[LiveCharge]:
    """Starts placed on each host that its stats have not shown yet.

    A charge counts until the host's next sample after it, or for
    `ISARD_PLACEMENT_CHARGE_SECONDS`, whichever comes first. Only the latest charge of a
    desktop counts (a desktop placed twice is in flight once).
    """
    sampled_at = {hypervisor.pk: hypervisor.last_seen_at for hypervisor in hypervisors}
    since = now - timedelta(seconds=fleet_settings().charge_seconds)
    rows = (
        PlacementCharge.objects.filter(created_at__gt=since)
        .order_by("-created_at", "-pk")
        .values_list("hypervisor_id", "desktop_id", "memory_mib", "vcpus", "created_at")
    )
    charges: list[LiveCharge] = []
    seen: set[int] = set()
    for hypervisor_id, desktop_id, memory_mib, vcpus, created_at in rows:
        if desktop_id is not None:
            if desktop_id in seen or desktop_id in exclude_desktop_ids:
                continue
            seen.add(desktop_id)
        last_sample = sampled_at.get(hypervisor_id)
        if last_sample is not None and last_sample >= created_at:
            continue  # the host has been sampled since: its stats show this start
        charges.append(LiveCharge(hypervisor_id, desktop_id, memory_mib, vcpus))
    return charges


@dataclass(frozen=True)
class PoolUsage:
    """What a storage pool holds: the disks isard recorded, and its file system's room.

    `used_bytes` is the real space of the recorded disks (an overlay counts only what it
    wrote, not its template); `virtual_bytes` is what guests believe they have. The file
    system figures come from the directory itself, so disks that other programs put there
    show up as less free space, not as isard's use.
    """

    disks: int
    used_bytes: int
    virtual_bytes: int
    filesystem_total_bytes: int | None
    filesystem_free_bytes: int | None


def storage_pool_usage(pool: StoragePool) -> PoolUsage:
    totals = pool.disks.aggregate(
        count=Count("pk"), used=Sum("actual_size_bytes"), virtual=Sum("virtual_size_bytes")
    )
    total: int | None = None
    free: int | None = None
    try:
        filesystem = shutil.disk_usage(pool.path)
        total, free = filesystem.total, filesystem.free
    except OSError:
        pass  # an unmounted share: shown as unreachable, not as an error page
    return PoolUsage(
        disks=totals["count"] or 0,
        used_bytes=totals["used"] or 0,
        virtual_bytes=totals["virtual"] or 0,
        filesystem_total_bytes=total,
        filesystem_free_bytes=free,
    )


def installation_uuid() -> str:
    """This installation's identity (made at its first use, then always the same)."""
    found = Installation.objects.order_by("pk").values_list("uuid", flat=True).first()
    if found is None:
        Installation.objects.get_or_create(pk=1, defaults={"uuid": uuid.uuid4()})
        found = Installation.objects.order_by("pk").values_list("uuid", flat=True).first()
    return str(found)


def storage_pool_directories(purpose: PoolPurpose | None = None) -> tuple[Path, ...]:
    """Every storage pool's directory (of one purpose): the only places whose files a domain
    may name and qemu-img may read or write (`hypervisors.paths.path_inside`)."""
    pools = StoragePool.objects.all()
    if purpose is not None:
        pools = pools.filter(purpose=purpose)
    return tuple(Path(path) for path in pools.values_list("path", flat=True))
