"""`domain_ip_addresses` on libvirt's test driver (real libvirt code, no guests)."""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Iterator

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
    libvirt_driver.define_domain(URI, build_domain_xml(spec, storage_pools=("/nonexistent",)))
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


# --- the choice itself, over answers shaped as libvirt's interfaceAddresses returns them ----

WINDOWS_AGENT_ANSWER: libvirt_driver.InterfaceAddresses = {
    "Loopback Pseudo-Interface 1": {
        "hwaddr": None,
        "addrs": [
            {"type": 1, "addr": "::1", "prefix": 128},
            {"type": 0, "addr": "127.0.0.1", "prefix": 8},
        ],
    },
    "Ethernet": {
        "hwaddr": "52:54:00:12:34:56",
        "addrs": [
            {"type": 1, "addr": "fe80::5d3c:1b2a:9e4f:1a2b", "prefix": 64},
            {"type": 1, "addr": "2001:db8:10::25", "prefix": 64},
            {"type": 0, "addr": "169.254.12.7", "prefix": 16},
            {"type": 0, "addr": "10.20.30.40", "prefix": 24},
        ],
    },
}
LEASE_ANSWER: libvirt_driver.InterfaceAddresses = {
    "vnet3": {
        "hwaddr": "52:54:00:12:34:56",
        "addrs": [{"type": 0, "addr": "192.168.122.57", "prefix": 24}],
    }
}


def test_the_agents_ipv4_address_wins_over_loopback_link_local_and_ipv6() -> None:
    chosen = libvirt_driver.choose_address([("agent", WINDOWS_AGENT_ANSWER)])
    assert chosen == libvirt_driver.GuestAddress(
        interface="Ethernet",
        mac="52:54:00:12:34:56",
        address="10.20.30.40",
        version=4,
        source="agent",
    )
    everything = libvirt_driver.choose_addresses([("agent", WINDOWS_AGENT_ANSWER)])
    assert [found.address for found in everything] == ["10.20.30.40", "2001:db8:10::25"]


def test_without_an_agent_the_dhcp_lease_is_used() -> None:
    chosen = libvirt_driver.choose_address(
        [("agent", None), ("lease", LEASE_ANSWER), ("arp", None)]
    )
    assert chosen is not None
    assert (chosen.address, chosen.source, chosen.interface) == ("192.168.122.57", "lease", "vnet3")


def test_an_agent_with_only_loopback_and_link_local_falls_through_to_the_lease() -> None:
    # A Windows guest whose DHCP client has not finished yet: only 169.254.x and fe80::.
    unconfigured = {
        "Ethernet": {
            "hwaddr": "52:54:00:12:34:56",
            "addrs": [
                {"type": 0, "addr": "169.254.12.7", "prefix": 16},
                {"type": 1, "addr": "fe80::1", "prefix": 64},
            ],
        },
        "lo": {"hwaddr": "00:00:00:00:00:00", "addrs": [{"type": 0, "addr": "127.0.0.1"}]},
    }
    chosen = libvirt_driver.choose_address([("agent", unconfigured), ("lease", LEASE_ANSWER)])
    assert chosen is not None and chosen.source == "lease"


def test_nothing_reported_is_none() -> None:
    assert libvirt_driver.choose_address([]) is None
    assert (
        libvirt_driver.choose_address(
            [("agent", None), ("lease", {}), ("arp", {"vnet0": {"hwaddr": "x", "addrs": []}})]
        )
        is None
    )


def test_garbage_in_an_answer_is_skipped() -> None:
    odd = {"eth0": {"hwaddr": None, "addrs": [{"addr": "not an address"}, {"addr": None}, {}]}}
    assert libvirt_driver.choose_address([("agent", odd)]) is None


def test_sources_after_the_first_with_an_address_are_not_asked() -> None:
    asked = []

    def answers() -> Iterator[tuple[str, libvirt_driver.InterfaceAddresses | None]]:
        for source, answer in (("agent", WINDOWS_AGENT_ANSWER), ("lease", LEASE_ANSWER)):
            asked.append(source)
            yield source, answer

    chosen = libvirt_driver.choose_address(answers())
    assert chosen is not None and chosen.source == "agent"
    assert asked == ["agent"]


def test_one_source_can_be_asked_alone() -> None:
    name = running_domain(networks=("default",))
    try:
        assert libvirt_driver.domain_ip_addresses(URI, name, sources=("agent",)) != []
        assert libvirt_driver.domain_ip_addresses(URI, name, sources=()) == []
    finally:
        libvirt_driver.undefine_domain(URI, name)
