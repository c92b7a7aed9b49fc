"""Generated domain XML passes libvirt's own schema (virt-xml-validate)."""

from __future__ import annotations

import subprocess
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hypervisors.drivers.domain_xml import DiskSpec, DomainSpec, build_domain_xml
from hypervisors.paths import PathOutsidePoolsError

#: Where the example specs keep their files.
POOLS = ("/srv",)


def spec(**overrides: object) -> DomainSpec:
    values: dict[str, object] = {
        "name": f"isard-{uuid.uuid4()}",
        "uuid": str(uuid.uuid4()),
        "domain_type": "qemu",
        "vcpus": 2,
        "memory_mib": 512,
        "disks": (DiskSpec(path="/srv/isard/desktops/a.qcow2"),),
    }
    values.update(overrides)
    return DomainSpec(**values)  # type: ignore[arg-type]


PROFILES = {
    "default": spec(),
    "everything": spec(
        title="Maths <lab> & co",
        disks=(
            DiskSpec(path="/srv/a.qcow2", bus="sata"),
            DiskSpec(path="/srv/install.iso", format="raw", device="cdrom"),
        ),
        boot_order=("cdrom", "hd"),
        networks=("default", "lab"),
        nic_model="e1000",
        video_model="virtio",
        graphics_password="abcdefgh",
        usb_redirect_devices=4,
        serial_log_path="/srv/logs/a.log",
        metadata={"desktop": "x", "owner": "ana"},
    ),
    "uefi_kvm": spec(domain_type="kvm", firmware="uefi"),
    "ide_legacy": spec(disks=(DiskSpec(path="/srv/a.qcow2", bus="ide"),), video_model="vga"),
    "vnc_only": spec(spice=False, usb_redirect_devices=0),
}


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_generated_xml_passes_libvirts_schema(name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.xml"
    path.write_text(build_domain_xml(PROFILES[name], storage_pools=POOLS))
    result = subprocess.run(
        ["virt-xml-validate", str(path), "domain"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr + result.stdout


def test_ide_devices_get_the_i440fx_machine_and_others_q35() -> None:
    assert 'machine="pc"' in build_domain_xml(PROFILES["ide_legacy"], storage_pools=POOLS)
    assert 'machine="q35"' in build_domain_xml(PROFILES["default"], storage_pools=POOLS)


def test_usb_redirection_channels_follow_the_profile() -> None:
    xml = build_domain_xml(PROFILES["everything"], storage_pools=POOLS)
    assert xml.count('<redirdev bus="usb" type="spicevmc"') == 4


def test_a_vnc_password_longer_than_eight_characters_is_refused() -> None:
    with pytest.raises(ValueError, match="8 characters"):
        spec(graphics_password="123456789")


def test_no_password_attribute_without_a_password() -> None:
    assert "passwd" not in build_domain_xml(PROFILES["default"], storage_pools=POOLS)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_domain_has_a_guest_agent_channel(name: str) -> None:
    devices = ET.fromstring(build_domain_xml(PROFILES[name], storage_pools=POOLS)).find("devices")
    assert devices is not None
    [agent] = [
        channel
        for channel in devices.findall("channel")
        if channel.get("type") == "unix"
        and (target := channel.find("target")) is not None
        and target.get("name") == "org.qemu.guest_agent.0"
    ]
    target = agent.find("target")
    assert target is not None and target.get("type") == "virtio"
    assert agent.find("source") is None  # libvirt chooses the socket path


def test_no_guest_agent_channel_where_its_socket_path_would_not_fit() -> None:
    from dataclasses import replace

    from hypervisors.drivers import libvirt_driver

    spec = replace(PROFILES["default"], guest_agent=False)
    devices = ET.fromstring(build_domain_xml(spec, storage_pools=POOLS)).find("devices")
    assert devices is not None and devices.findall("channel[@type='unix']") == []
    assert libvirt_driver.guest_agent_channel_fits("qemu:///system")
    assert libvirt_driver.guest_agent_channel_fits("qemu+tls://lab2.school.lan/system")
    assert not libvirt_driver.guest_agent_channel_fits("qemu:///session")
    assert not libvirt_driver.guest_agent_channel_fits("qemu+unix:///session?socket=/run/x")


@pytest.mark.parametrize(
    "disk",
    [
        DiskSpec(path="/etc/shadow", format="raw", device="cdrom"),
        DiskSpec(path="/etc/shadow", format="raw"),
        DiskSpec(path="/srv/../etc/shadow", format="raw", device="cdrom"),
        DiskSpec(path="/srv", format="raw", device="cdrom"),
        DiskSpec(path="", format="raw", device="cdrom"),
        DiskSpec(path="/srvx/a.iso", format="raw", device="cdrom"),
    ],
)
def test_a_disk_or_cdrom_outside_the_storage_pools_is_refused(disk: DiskSpec) -> None:
    with pytest.raises(PathOutsidePoolsError, match="not inside the storage pools"):
        build_domain_xml(spec(disks=(disk,)), storage_pools=POOLS)


def test_a_symlink_in_a_pool_pointing_outside_it_is_refused(tmp_path: Path) -> None:
    pool = tmp_path / "media"
    pool.mkdir()
    (pool / "install.iso").symlink_to("/etc/shadow")
    cdrom = DiskSpec(path=str(pool / "install.iso"), format="raw", device="cdrom")
    with pytest.raises(PathOutsidePoolsError):
        build_domain_xml(spec(disks=(cdrom,)), storage_pools=(pool,))


def test_a_symlink_between_files_of_the_pools_is_accepted(tmp_path: Path) -> None:
    media, desktops = tmp_path / "media", tmp_path / "desktops"
    media.mkdir()
    desktops.mkdir()
    (media / "real.iso").write_bytes(b"")
    (desktops / "link.iso").symlink_to(media / "real.iso")
    cdrom = DiskSpec(path=str(desktops / "link.iso"), format="raw", device="cdrom")
    xml = build_domain_xml(spec(disks=(cdrom,)), storage_pools=(media, desktops))
    assert str(desktops / "link.iso") in xml


def test_a_serial_log_outside_the_pools_and_log_directories_is_refused() -> None:
    outside = spec(serial_log_path="/etc/cron.d/x")
    with pytest.raises(PathOutsidePoolsError):
        build_domain_xml(outside, storage_pools=POOLS)
    logged = spec(serial_log_path="/var/log/isard/a.log")
    assert "/var/log/isard/a.log" in build_domain_xml(
        logged, storage_pools=POOLS, log_directories=("/var/log/isard",)
    )
