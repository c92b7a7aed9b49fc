"""`domain_ip_addresses` on libvirt's test driver (real libvirt code, no guests)."""

from __future__ import annotations

import ipaddress
import uuid

import pytest

from hypervisors.drivers import libvirt_driver
from hypervisors.drivers.domain_xml import DiskSpec, DomainSpec, build_domain_xml

URI = "test:///default"


def running_domain(*, networks: tuple[str, ...]) -> str:
    name = f"isard-test-addresses-{uuid.uuid4().hex[:8]}"
    spec = DomainSpec(
        name=name,
        uuid=str(uuid.uuid4()),
        domain_type="qemu",
        vcpus=1,
        memory_mib=64,
        disks=(DiskSpec(path="/nonexistent/disk.qcow2"),),
        networks=networks,
        spice=False,
        vnc=False,
    )
    libvirt_driver.define_domain(URI, build_domain_xml(spec))
    libvirt_driver.start_domain(URI, name)
    return name


def test_a_guest_on_a_network_reports_its_address_and_mac() -> None:
    name = running_domain(networks=("default",))
    try:
        [address] = libvirt_driver.domain_ip_addresses(URI, name)
    finally:
        libvirt_driver.undefine_domain(URI, name)
    # The test driver hands out 192.168.122.x, then 123.x... to each new domain.
    assert address.version == 4 and ipaddress.ip_address(address.address).is_private
    assert address.source == "agent"  # the test driver answers as an agent would
    assert len(address.mac.split(":")) == 6


def test_a_guest_without_a_network_reports_nothing() -> None:
    name = running_domain(networks=())
    try:
        assert libvirt_driver.domain_ip_addresses(URI, name) == []
    finally:
        libvirt_driver.undefine_domain(URI, name)


def test_a_missing_guest_is_an_error_not_an_empty_list() -> None:
    with pytest.raises(libvirt_driver.DomainNotFoundError):
        libvirt_driver.domain_ip_addresses(URI, "isard-no-such-guest")
