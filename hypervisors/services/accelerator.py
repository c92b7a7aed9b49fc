"""Which accelerator a host's guests really boot under: a real boot decides, not what
libvirt's capabilities advertise."""

from __future__ import annotations

import logging
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from django.utils import timezone

from hypervisors import qemu_img
from hypervisors.choices import (
    Accelerator,
    AcceleratorSetting,
    PoolPurpose,
)
from hypervisors.demo import demo_image_cache_path
from hypervisors.drivers import libvirt_driver
from hypervisors.drivers.domain_xml import DiskSpec, DomainSpec, build_domain_xml
from hypervisors.guest_image import GUEST_READY_MARKER
from hypervisors.models import (
    Hypervisor,
)
from hypervisors.paths import PathOutsidePoolsError
from hypervisors.selectors import storage_pool_directories
from hypervisors.services.pools import pool_for

if TYPE_CHECKING:
    pass


logger = logging.getLogger(__name__)


#: How long the accelerator probe waits for the demo guest to boot under KVM.
KVM_PROBE_TIMEOUT_SECONDS = 20.0


TCG_PROBE_TIMEOUT_SECONDS = 60.0


def _probe_domain_xml(
    *, domain_type: str, disk: Path, serial_log: Path, storage_pools: tuple[Path, ...]
) -> str:
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
        ),
        storage_pools=storage_pools,
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

    results: list[str] = []
    chosen = ""
    work = Path(tempfile.mkdtemp(prefix="probe-", dir=pool_for(PoolPurpose.DESKTOPS).path))
    # The probe's overlay sits on the cached demo image, which is kept beside the pools.
    storage_pools = (*storage_pool_directories(), demo_image_cache_path().parent)
    try:
        work.chmod(0o755)
        for domain_type, timeout in (
            (Accelerator.KVM, KVM_PROBE_TIMEOUT_SECONDS),
            (Accelerator.QEMU, TCG_PROBE_TIMEOUT_SECONDS),
        ):
            overlay = work / f"{domain_type}.qcow2"
            qemu_img.create_overlay(overlay, probe_image, storage_pools=storage_pools)
            serial_log = work / f"{domain_type}.log"
            xml = _probe_domain_xml(
                domain_type=domain_type,
                disk=overlay,
                serial_log=serial_log,
                storage_pools=storage_pools,
            )
            booted, detail = libvirt_driver.boot_probe(
                hypervisor.uri, xml, str(serial_log), GUEST_READY_MARKER, timeout
            )
            results.append(f"{domain_type}: {detail}")
            if booted:
                chosen = domain_type
                break
    except (qemu_img.QemuImgError, PathOutsidePoolsError, libvirt_driver.DriverError) as error:
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
