"""Writes for hypervisors, storage pools and disks.

Driver and qemu-img calls happen outside database transactions: the row is committed
first, the slow I/O runs, then the result is committed (a libvirt call can take seconds
and must never hold a lock on the rows other workers need).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from hypervisors import qemu_img
from hypervisors.choices import (
    Accelerator,
    AcceleratorSetting,
    DiskFormat,
    DiskStatus,
    HypervisorState,
    PoolPurpose,
)
from hypervisors.drivers import libvirt_driver
from hypervisors.drivers.domain_xml import DiskSpec, DomainSpec, build_domain_xml
from hypervisors.models import Disk, Hypervisor, StoragePool
from isard.exceptions import InfrastructureError

logger = logging.getLogger(__name__)

#: How long the accelerator probe waits for the demo guest to boot under KVM.
KVM_PROBE_TIMEOUT_SECONDS = 20.0
TCG_PROBE_TIMEOUT_SECONDS = 60.0


def storage_pools_ensure(*, root: Path | None = None) -> dict[str, StoragePool]:
    """Create (once) one pool per purpose under the storage root, directories included."""
    root = Path(root or settings.ISARD_STORAGE_ROOT)
    pools: dict[str, StoragePool] = {}
    for purpose in PoolPurpose:
        directory = root / purpose.value
        directory.mkdir(parents=True, exist_ok=True)
        # qemu runs as its own user under qemu:///system and must reach the files.
        directory.chmod(0o755)
        pool, _ = StoragePool.objects.get_or_create(
            path=str(directory), defaults={"name": f"{purpose.value}", "purpose": purpose}
        )
        pools[purpose.value] = pool
    return pools


def pool_for(purpose: PoolPurpose) -> StoragePool:
    pool = StoragePool.objects.filter(purpose=purpose).order_by("pk").first()
    if pool is None:
        pool = storage_pools_ensure()[purpose.value]
    return pool


def hypervisor_register(*, name: str, uri: str) -> Hypervisor:
    """Register a host (idempotent by name) and let it reach every storage pool."""
    hypervisor, created = Hypervisor.objects.get_or_create(name=name, defaults={"uri": uri})
    if not created and hypervisor.uri != uri:
        hypervisor.uri = uri
        hypervisor.save(update_fields=["uri"])
    if created:
        hypervisor.storage_pools.set(StoragePool.objects.all())
    return hypervisor


def hypervisor_refresh(*, hypervisor: Hypervisor) -> Hypervisor:
    """Read the host's size and load; mark it online, or offline with libvirt's reason."""
    try:
        info = libvirt_driver.host_info(hypervisor.uri)
    except libvirt_driver.DriverError as error:
        Hypervisor.objects.filter(pk=hypervisor.pk).update(
            state=HypervisorState.OFFLINE, last_error=str(error)
        )
        hypervisor.refresh_from_db()
        return hypervisor
    Hypervisor.objects.filter(pk=hypervisor.pk).update(
        state=HypervisorState.ONLINE,
        last_error="",
        last_seen_at=timezone.now(),
        cpus=info.cpus,
        memory_mib=info.memory_mib,
        free_memory_mib=info.free_memory_mib,
        running_domains=info.running_domains,
    )
    hypervisor.refresh_from_db()
    return hypervisor


def _probe_domain_xml(*, domain_type: str, disk: Path, serial_log: Path) -> str:
    return build_domain_xml(
        DomainSpec(
            name=f"isard-probe-{domain_type}-{uuid.uuid4().hex[:8]}",
            uuid=str(uuid.uuid4()),
            domain_type=domain_type,
            vcpus=1,
            memory_mib=256,
            disks=(DiskSpec(path=str(disk)),),
            spice=False,
            vnc=False,
            serial_log_path=str(serial_log),
        )
    )


def hypervisor_detect_accelerator(
    *, hypervisor: Hypervisor, probe_image: Path, force: bool = False
) -> Hypervisor:
    """Find out whether real guests boot under KVM on this host; fall back to TCG.

    The admin's `accelerator_setting` wins when it is not "auto". Otherwise the demo guest
    is booted under KVM from a throw-away overlay: capabilities advertise KVM on machines
    where nested KVM crashes every guest, so only a real boot can tell.
    """
    if hypervisor.accelerator_setting != AcceleratorSetting.AUTO:
        Hypervisor.objects.filter(pk=hypervisor.pk).update(
            accelerator=hypervisor.accelerator_setting,
            accelerator_detail="set by the administrator",
            accelerator_probed_at=timezone.now(),
        )
        hypervisor.refresh_from_db()
        return hypervisor
    if hypervisor.accelerator and not force:
        return hypervisor

    from hypervisors.guest_image import GUEST_READY_MARKER

    results: list[str] = []
    chosen = ""
    work = Path(tempfile.mkdtemp(prefix="probe-", dir=pool_for(PoolPurpose.DESKTOPS).path))
    try:
        work.chmod(0o755)
        for domain_type, timeout in (
            (Accelerator.KVM, KVM_PROBE_TIMEOUT_SECONDS),
            (Accelerator.QEMU, TCG_PROBE_TIMEOUT_SECONDS),
        ):
            overlay = work / f"{domain_type}.qcow2"
            qemu_img.create_overlay(overlay, probe_image)
            serial_log = work / f"{domain_type}.log"
            xml = _probe_domain_xml(domain_type=domain_type, disk=overlay, serial_log=serial_log)
            booted, detail = libvirt_driver.boot_probe(
                hypervisor.uri, xml, str(serial_log), GUEST_READY_MARKER, timeout
            )
            results.append(f"{domain_type}: {detail}")
            if booted:
                chosen = domain_type
                break
    except (qemu_img.QemuImgError, libvirt_driver.DriverError) as error:
        results.append(f"probe failed: {error}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Hypervisor.objects.filter(pk=hypervisor.pk).update(
        accelerator=chosen,
        accelerator_detail="; ".join(results),
        accelerator_probed_at=timezone.now(),
    )
    hypervisor.refresh_from_db()
    logger.info("accelerator of %s: %s (%s)", hypervisor.name, chosen or "none", "; ".join(results))
    return hypervisor


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


def disk_create_overlay(*, parent: Disk, pool: StoragePool | None = None) -> Disk:
    """A new copy-on-write disk on top of `parent`. Leaves no file behind on failure."""
    pool = pool or pool_for(PoolPurpose.DESKTOPS)
    path = disk_path(pool)
    try:
        qemu_img.create_overlay(path, Path(parent.path), backing_format=parent.format)
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


def disk_create_empty(*, size_bytes: int, pool: StoragePool | None = None) -> Disk:
    pool = pool or pool_for(PoolPurpose.DESKTOPS)
    path = disk_path(pool)
    try:
        qemu_img.create_empty(path, size_bytes)
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
