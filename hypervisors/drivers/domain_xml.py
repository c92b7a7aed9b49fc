"""Libvirt domain XML, generated from typed data in this one place.

Services describe a desktop as a `DomainSpec`; nothing else in the code base pastes XML
strings together. The output is checked against libvirt's own schema in the tests
(`virt-xml-validate`) and by libvirt at define time (`VIR_DOMAIN_DEFINE_VALIDATE`).
"""

from __future__ import annotations

import hashlib
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from hypervisors.paths import path_inside

ISARD_XML_NAMESPACE = "https://isard.invalid/xmlns/libvirt/1"


@dataclass(frozen=True)
class DiskSpec:
    path: str
    format: str = "qcow2"
    bus: str = "virtio"
    device: str = "disk"  # "disk" or "cdrom"
    read_only: bool = False


@dataclass(frozen=True)
class DomainSpec:
    name: str
    uuid: str
    domain_type: str  # "kvm" or "qemu" (TCG)
    vcpus: int
    memory_mib: int
    disks: tuple[DiskSpec, ...]
    title: str = ""
    boot_order: tuple[str, ...] = ("hd",)
    firmware: str = "bios"  # "bios" or "uefi"
    nic_model: str = "virtio"
    networks: tuple[str, ...] = ()
    video_model: str = "qxl"
    spice: bool = True
    vnc: bool = True
    graphics_password: str = ""
    graphics_listen: str = "127.0.0.1"
    usb_redirect_devices: int = 0
    guest_agent: bool = True
    serial_log_path: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.domain_type not in ("kvm", "qemu"):
            raise ValueError(f"domain_type must be 'kvm' or 'qemu', not {self.domain_type!r}")
        if self.vcpus < 1 or self.memory_mib < 16:
            raise ValueError("a domain needs at least 1 vCPU and 16 MiB of memory")
        if self.vnc and len(self.graphics_password) > 8:
            # VNC authentication silently uses only the first 8 characters.
            raise ValueError("a VNC password is at most 8 characters")


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def _target_dev(bus: str, index: int) -> str:
    prefix = {"virtio": "vd", "sata": "sd", "ide": "hd", "scsi": "sd", "usb": "sd"}[bus]
    return prefix + "abcdefghijklmnopqrstuvwxyz"[index]


def shape_key(spec: DomainSpec) -> str:
    """What decides whether the XML is valid: the spec without names, paths and secrets.

    Every desktop of a hardware profile has the same shape, so libvirt's (slow) schema
    validation needs to run once per shape, not once per desktop.
    """
    neutral = replace(
        spec,
        name="n",
        uuid="00000000-0000-0000-0000-000000000000",
        title="t" if spec.title else "",
        disks=tuple(replace(disk, path="/p") for disk in spec.disks),
        graphics_password="p" if spec.graphics_password else "",
        serial_log_path="/p" if spec.serial_log_path else None,
        metadata=dict.fromkeys(spec.metadata, "v"),
    )
    return hashlib.sha256(repr(neutral).encode()).hexdigest()


def _password(spec: DomainSpec) -> dict[str, str]:
    return {"passwd": spec.graphics_password} if spec.graphics_password else {}


def machine_type(spec: DomainSpec) -> str:
    """q35 unless a device needs the IDE bus, which only the older i440fx ('pc') has."""
    return "pc" if any(disk.bus == "ide" for disk in spec.disks) else "q35"


def build_domain_xml(
    spec: DomainSpec,
    *,
    storage_pools: Sequence[str | os.PathLike[str]],
    log_directories: Sequence[str | os.PathLike[str]] = (),
) -> str:
    """Return the domain XML for `spec`, whose disks and CD-ROMs lie in `storage_pools`.

    libvirt chowns every file the domain names to the qemu user and the guest reads it, so
    a path from an editable row could expose any file of the host: each disk (after its
    symlinks are followed) must lie inside a pool, the serial log inside a pool or one of
    `log_directories`, or `PathOutsidePoolsError` is raised and no XML is made.
    """
    for disk in spec.disks:
        path_inside(disk.path, storage_pools)
    if spec.serial_log_path:
        path_inside(spec.serial_log_path, (*storage_pools, *log_directories))
    domain = ET.Element("domain", {"type": spec.domain_type})
    _sub(domain, "name", spec.name)
    _sub(domain, "uuid", spec.uuid)
    if spec.title:
        _sub(domain, "title", spec.title.replace("\n", " "))
    if spec.metadata:
        metadata = _sub(domain, "metadata")
        ET.register_namespace("isard", ISARD_XML_NAMESPACE)
        ET.SubElement(metadata, f"{{{ISARD_XML_NAMESPACE}}}desktop", dict(spec.metadata))
    _sub(domain, "memory", str(spec.memory_mib), unit="MiB")
    _sub(domain, "currentMemory", str(spec.memory_mib), unit="MiB")
    _sub(domain, "vcpu", str(spec.vcpus), placement="static")

    os_attrs = {"firmware": "efi"} if spec.firmware == "uefi" else {}
    os_element = _sub(domain, "os", **os_attrs)
    _sub(os_element, "type", "hvm", arch="x86_64", machine=machine_type(spec))
    for device in spec.boot_order:
        _sub(os_element, "boot", dev=device)

    features = _sub(domain, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    _sub(domain, "clock", offset="utc")
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", "restart")
    _sub(domain, "on_crash", "destroy")

    devices = _sub(domain, "devices")
    per_bus: dict[str, int] = {}
    for disk in spec.disks:
        # A CD-ROM cannot sit on virtio-blk; put it on the machine's own storage bus.
        bus = disk.bus
        if disk.device == "cdrom" and bus == "virtio":
            bus = "ide" if machine_type(spec) == "pc" else "sata"
        index = per_bus.get(bus, 0)
        per_bus[bus] = index + 1
        element = _sub(devices, "disk", type="file", device=disk.device)
        driver_attrs = {"name": "qemu", "type": disk.format}
        if disk.device == "disk":
            driver_attrs["discard"] = "unmap"
        _sub(element, "driver", **driver_attrs)
        _sub(element, "source", file=disk.path)
        _sub(element, "target", dev=_target_dev(bus, index), bus=bus)
        if disk.read_only or disk.device == "cdrom":
            _sub(element, "readonly")

    _sub(devices, "controller", type="usb", model="qemu-xhci", ports="15")
    for network in spec.networks:
        interface = _sub(devices, "interface", type="network")
        _sub(interface, "source", network=network)
        _sub(interface, "model", type=spec.nic_model)

    if spec.serial_log_path:
        serial = _sub(devices, "serial", type="file")
        _sub(serial, "source", path=spec.serial_log_path)
        _sub(serial, "target", port="0")
    else:
        serial = _sub(devices, "serial", type="pty")
        _sub(serial, "target", port="0")
    _sub(devices, "input", type="tablet", bus="usb")
    # The QEMU guest agent's port (libvirt picks the socket path). A guest with the agent
    # installed (Windows images usually have it) reports its IP addresses through it,
    # static ones and those on bridged networks too: what the RDP file connects to.
    if spec.guest_agent:
        agent = _sub(devices, "channel", type="unix")
        _sub(agent, "target", type="virtio", name="org.qemu.guest_agent.0")

    if spec.spice:
        graphics = _sub(devices, "graphics", type="spice", autoport="yes", **_password(spec))
        _sub(graphics, "listen", type="address", address=spec.graphics_listen)
        channel = _sub(devices, "channel", type="spicevmc")
        _sub(channel, "target", type="virtio", name="com.redhat.spice.0")
        for _ in range(spec.usb_redirect_devices):
            _sub(devices, "redirdev", bus="usb", type="spicevmc")
    if spec.vnc:
        graphics = _sub(devices, "graphics", type="vnc", autoport="yes", **_password(spec))
        _sub(graphics, "listen", type="address", address=spec.graphics_listen)
    video = _sub(devices, "video")
    _sub(video, "model", type=spec.video_model)
    _sub(devices, "memballoon", model="virtio")
    # pvpanic: a guest kernel that panics tells QEMU, libvirt reports the domain crashed
    # and the desktop says its system crashed, instead of "started" beside a dead screen.
    _sub(devices, "panic", model="isa")

    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode")
