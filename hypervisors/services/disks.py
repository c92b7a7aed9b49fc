"""Disk files in the storage pools and their rows: overlays, empty disks, imports, sizes."""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from django.db.models import ProtectedError

from hypervisors import qemu_img
from hypervisors.choices import (
    DiskFormat,
    DiskStatus,
    PoolPurpose,
)
from hypervisors.models import (
    Disk,
    StoragePool,
)
from hypervisors.selectors import storage_pool_directories
from hypervisors.services.pools import pool_for
from isard.core.errors import (
    InfrastructureError,
)

if TYPE_CHECKING:
    pass


logger = logging.getLogger(__name__)


def disk_path(pool: StoragePool) -> Path:
    return Path(pool.path) / f"{uuid.uuid4()}.qcow2"


def disk_record(
    *, pool: StoragePool, path: Path, parent: Disk | None = None, read_only: bool = False
) -> Disk:
    """Record a disk file that exists, with its real sizes as qemu-img reports them."""
    image = qemu_img.info(path)
    return Disk.objects.create(
        pool=pool,
        path=str(path),
        format=image.format if image.format in DiskFormat.values else DiskFormat.QCOW2,
        parent=parent,
        read_only=read_only,
        virtual_size_bytes=image.virtual_size_bytes,
        actual_size_bytes=image.actual_size_bytes,
        status=DiskStatus.READY,
    )


def disk_refresh_size(*, disk: Disk) -> Disk:
    try:
        image = qemu_img.info(Path(disk.path))
    except qemu_img.QemuImgError:
        return disk
    Disk.objects.filter(pk=disk.pk).update(
        virtual_size_bytes=image.virtual_size_bytes, actual_size_bytes=image.actual_size_bytes
    )
    disk.refresh_from_db()
    return disk


def disk_refresh_actual_size(*, disk_id: int) -> None:
    """Record what a disk really takes now, from the file system (no subprocess).

    Called when a desktop stops, so the pool's use follows what guests wrote. A disk
    whose file this process cannot see (a host with local storage elsewhere) keeps its
    last figure.
    """
    disk = Disk.objects.filter(pk=disk_id).only("path").first()
    if disk is None:
        return
    try:
        actual = Path(disk.path).stat().st_blocks * 512
    except OSError:
        return
    Disk.objects.filter(pk=disk_id).update(actual_size_bytes=actual)


def disk_create_overlay(*, parent: Disk, pool: StoragePool | None = None) -> Disk:
    """A new copy-on-write disk on top of `parent`. Leaves no file behind on failure."""
    pool = pool or pool_for(PoolPurpose.DESKTOPS)
    path = disk_path(pool)
    try:
        qemu_img.create_overlay(
            path,
            Path(parent.path),
            storage_pools=storage_pool_directories(),
            backing_format=parent.format,
        )
        # No `qemu-img info` here: an overlay has its parent's virtual size, and its real
        # size is what the file system says. A second subprocess per desktop would
        # double the cost of creating a class.
        return Disk.objects.create(
            pool=pool,
            path=str(path),
            format=DiskFormat.QCOW2,
            parent=parent,
            virtual_size_bytes=parent.virtual_size_bytes,
            actual_size_bytes=path.stat().st_blocks * 512,
        )
    except Exception as error:
        path.unlink(missing_ok=True)
        if isinstance(error, qemu_img.QemuImgError):
            raise InfrastructureError(f"could not create the disk: {error}") from error
        raise


def disk_remove(disk: Disk) -> bool:
    """Remove a disk for good, its row then its file; one with disks built on it is kept
    (False): the chain stays whole."""
    try:
        disk.delete()
    except ProtectedError:
        logger.warning("disk %s has disks on it; kept", disk.path)
        return False
    Path(disk.path).unlink(missing_ok=True)
    return True


def disk_create_empty(*, size_bytes: int, pool: StoragePool | None = None) -> Disk:
    pool = pool or pool_for(PoolPurpose.DESKTOPS)
    path = disk_path(pool)
    try:
        qemu_img.create_empty(path, size_bytes, storage_pools=storage_pool_directories())
        return disk_record(pool=pool, path=path)
    except Exception as error:
        path.unlink(missing_ok=True)
        if isinstance(error, qemu_img.QemuImgError):
            raise InfrastructureError(f"could not create the disk: {error}") from error
        raise


def disk_import(*, source: Path, pool: StoragePool, move: bool = False) -> Disk:
    """Bring an existing image into a pool as a read-only base disk."""
    destination = disk_path(pool)
    if move:
        shutil.move(str(source), destination)
    else:
        shutil.copyfile(source, destination)
    os.chmod(destination, 0o444)
    return disk_record(pool=pool, path=destination, read_only=True)
