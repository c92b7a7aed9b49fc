"""The libvirt driver against libvirt's own test:/// driver (real libvirt, no guests)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from hypervisors.drivers import libvirt_driver
from hypervisors.drivers.domain_xml import DiskSpec, DomainSpec, build_domain_xml

URI = "test:///default"
NODE_XML = """<node>
  <cpu><nodes>1</nodes><sockets>1</sockets><cores>8</cores><threads>2</threads><mhz>2000</mhz></cpu>
  <memory>50331648</memory>
</node>"""


def define_one(uri: str = URI, **overrides: object) -> str:
    name = f"isard-{uuid.uuid4()}"
    values: dict[str, object] = {
        "name": name,
        "uuid": str(uuid.uuid4()),
        "domain_type": "qemu",
        "vcpus": 1,
        "memory_mib": 128,
        "disks": (DiskSpec(path="/tmp/none.qcow2"),),
        "graphics_password": "secret12",
    }
    values.update(overrides)
    spec = DomainSpec(**values)  # type: ignore[arg-type]
    libvirt_driver.define_domain(uri, build_domain_xml(spec, storage_pools=("/tmp",)))
    return name


def test_lifecycle_define_start_reset_destroy_undefine() -> None:
    name = define_one()
    assert libvirt_driver.domain_state(URI, name) == libvirt_driver.DomainState.SHUTOFF
    libvirt_driver.start_domain(URI, name)
    assert libvirt_driver.domain_state(URI, name) == libvirt_driver.DomainState.RUNNING
    assert libvirt_driver.list_domain_states(URI)[name] == libvirt_driver.DomainState.RUNNING
    libvirt_driver.reset_domain(URI, name)
    libvirt_driver.destroy_domain(URI, name)
    libvirt_driver.destroy_domain(URI, name)  # already off: not an error
    assert libvirt_driver.domain_state(URI, name) == libvirt_driver.DomainState.SHUTOFF
    libvirt_driver.undefine_domain(URI, name)
    libvirt_driver.undefine_domain(URI, name)  # already gone: not an error
    assert libvirt_driver.domain_state(URI, name) == libvirt_driver.DomainState.MISSING
    assert name not in libvirt_driver.list_domain_states(URI)


def test_domains_of_other_software_are_not_listed() -> None:
    # test:///default always holds a domain called "test"; it is not ours.
    assert "test" not in libvirt_driver.list_domain_states(URI)


def test_invalid_xml_is_refused_with_libvirts_reason() -> None:
    with pytest.raises(libvirt_driver.DriverError, match="define domain"):
        define_one(boot_order=("usb",))


def test_operations_on_a_missing_domain_raise_domain_not_found() -> None:
    with pytest.raises(libvirt_driver.DomainNotFoundError):
        libvirt_driver.start_domain(URI, "isard-does-not-exist")


def test_an_unreachable_uri_gives_a_driver_error() -> None:
    with pytest.raises(libvirt_driver.DriverError, match="cannot connect"):
        libvirt_driver.ping("qemu+unix:///system?socket=/nonexistent/libvirt-sock")


def test_host_info_reads_a_custom_node_description(tmp_path: Path) -> None:
    node = tmp_path / "node.xml"
    node.write_text(NODE_XML)
    info = libvirt_driver.host_info(f"test://{node}")
    assert info.cpus == 16
    assert info.memory_mib == 48 * 1024


def test_graphics_ports_of_a_running_domain() -> None:
    name = define_one()
    libvirt_driver.start_domain(URI, name)
    ports = libvirt_driver.graphics_ports(URI, name)
    # The test driver assigns no real ports; the call still parses the live XML.
    assert ports.listen in (None, "127.0.0.1")
    libvirt_driver.undefine_domain(URI, name)
