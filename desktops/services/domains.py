"""A desktop's libvirt domain, described from its rows: the one place a desktop becomes a
`DomainSpec` (and so domain XML)."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from pathlib import Path

from django.conf import settings

from desktops.choices import DesktopStatus
from desktops.models import Desktop
from desktops.viewer.services import graphics_listen_address
from hypervisors.drivers import libvirt_driver
from hypervisors.drivers.domain_xml import DiskSpec, DomainSpec, build_domain_xml, shape_key
from hypervisors.models import Hypervisor
from hypervisors.selectors import installation_uuid, storage_pool_directories
from isard.core.errors import (
    ConflictError,
)

logger = logging.getLogger(__name__)


S = DesktopStatus


def serial_log_directory() -> Path:
    return Path(settings.ISARD_STORAGE_ROOT) / "logs"


def serial_log_path(desktop: Desktop) -> Path:
    directory = serial_log_directory()
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{desktop.domain_name}.serial.log"


def desktop_domain_spec(
    desktop: Desktop, hypervisor: Hypervisor, *, installation: str | None = None
) -> DomainSpec:
    """The desktop's domain on `hypervisor`. `installation`: this installation's identity,
    when the caller describes many desktops and has read it once already."""
    hardware = desktop.hardware
    if desktop.disk is None:
        raise ConflictError(f"The desktop “{desktop.name}” has no disk yet.")
    disks = [DiskSpec(path=desktop.disk.path, format=desktop.disk.format, bus=hardware.disk_bus)]
    cdroms = [
        DiskSpec(path=media.path, format="raw", bus=hardware.disk_bus, device="cdrom")
        for media in desktop.media.all()
    ]
    disks += cdroms
    boot_order = tuple(hardware.boot_order)
    if cdroms and "cdrom" not in boot_order:
        boot_order = ("cdrom", *boot_order)  # an install disc in the drive is there to boot
    return DomainSpec(
        name=desktop.domain_name,
        uuid=str(desktop.uuid),
        title=desktop.name,
        domain_type=hypervisor.accelerator or "qemu",
        vcpus=hardware.vcpus,
        memory_mib=hardware.memory_mib,
        disks=tuple(disks),
        boot_order=boot_order,
        firmware=hardware.firmware,
        nic_model=hardware.nic_model,
        networks=tuple(hardware.networks),
        video_model=hardware.video_model,
        spice=hardware.graphics_spice,
        vnc=hardware.graphics_vnc,
        graphics_password=desktop.graphics_password,
        graphics_listen=graphics_listen_address(hypervisor),
        usb_redirect_devices=hardware.usb_redirect_devices if hardware.graphics_spice else 0,
        guest_agent=libvirt_driver.guest_agent_channel_fits(hypervisor.uri),
        serial_log_path=str(serial_log_path(desktop)),
        metadata={
            "desktop": str(desktop.uuid),
            "owner": desktop.owner.get_username(),
            "installation": installation or installation_uuid(),
        },
    )


def desktop_domain_xml(spec: DomainSpec, *, storage_pools: Sequence[Path] | None = None) -> str:
    """The XML of a desktop's domain; refused (`PathOutsidePoolsError`) if a disk or CD-ROM
    is not in a storage pool. `storage_pools`: when the caller has read them already."""
    return build_domain_xml(
        spec,
        storage_pools=storage_pool_directories() if storage_pools is None else storage_pools,
        log_directories=(serial_log_directory(),),
    )


def desktop_define(desktop: Desktop, hypervisor: Hypervisor) -> None:
    spec = desktop_domain_spec(desktop, hypervisor)
    libvirt_driver.define_domain(hypervisor.uri, desktop_domain_xml(spec), shape=shape_key(spec))


def new_graphics_password() -> str:
    # VNC uses at most 8 characters; 8 URL-safe characters are 48 random bits.
    return secrets.token_urlsafe(6)
