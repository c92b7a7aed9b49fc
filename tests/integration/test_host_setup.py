"""The setup leaves libvirt's QEMU capabilities valid on a host whose /dev/kvm is root-only.

A new machine without udev has `/dev/kvm` as `crw------- root root`; libvirt then throws its
QEMU capabilities away at every lookup and probes again, so every define waits about 30 s
(measured on these machines: 32 s root-only, 26 ms after the fix). The probe rewrites the
capabilities cache, which is how this test sees it without timing anything.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hypervisors.drivers import libvirt_driver
from hypervisors.host_access import KVM_DEVICE, kvm_access_problem

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="changing /dev/kvm's owner needs root"),
    pytest.mark.skipif(not KVM_DEVICE.exists(), reason="this machine has no /dev/kvm"),
]

SYSTEM_URI = "qemu:///system"
ROOT = Path(__file__).resolve().parents[2]
CAPABILITIES_CACHE = Path("/var/cache/libvirt/qemu/capabilities")
PROBE_DOMAIN = """<domain type='qemu'>
  <name>kvm-access-check</name>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64'>hvm</type></os>
</domain>"""


@pytest.fixture
def root_only_kvm() -> Iterator[None]:
    """/dev/kvm as a machine without udev has it; put back as it was afterwards."""
    before = KVM_DEVICE.stat()
    os.chown(KVM_DEVICE, 0, 0)
    os.chmod(KVM_DEVICE, 0o600)
    try:
        yield
    finally:
        os.chown(KVM_DEVICE, before.st_uid, before.st_gid)
        os.chmod(KVM_DEVICE, before.st_mode & 0o7777)


def _cache_stamps() -> dict[str, int]:
    return {entry.name: entry.stat().st_mtime_ns for entry in CAPABILITIES_CACHE.glob("*.xml")}


def _define_and_undefine() -> None:
    libvirt_driver.define_domain(SYSTEM_URI, PROBE_DOMAIN)
    libvirt_driver.undefine_domain(SYSTEM_URI, "kvm-access-check")


def test_the_setup_on_a_host_with_a_root_only_kvm_device_keeps_defines_from_re_probing(
    root_only_kvm: None,
) -> None:
    problem = kvm_access_problem()
    assert problem is not None
    assert "crw------- root:root" in problem
    assert "./isardctl host" in problem
    assert "\n" not in problem

    setup = subprocess.run(
        [str(ROOT / "isardctl"), "host"], capture_output=True, text=True, timeout=600
    )
    assert setup.returncode == 0, setup.stderr + setup.stdout
    assert "giving /dev/kvm to group kvm" in setup.stdout

    assert kvm_access_problem() is None
    status = KVM_DEVICE.stat()
    assert status.st_mode & 0o777 == 0o660
    # The first lookup after the change may still find the root-only probe and redo it once.
    _define_and_undefine()
    stamps = _cache_stamps()
    assert stamps, f"libvirt keeps no capabilities cache in {CAPABILITIES_CACHE}"
    _define_and_undefine()
    _define_and_undefine()
    assert _cache_stamps() == stamps, "libvirt probed QEMU again: its capabilities went stale"


def test_the_host_step_changes_nothing_on_a_host_already_set_up() -> None:
    for _ in range(2):
        setup = subprocess.run(
            [str(ROOT / "isardctl"), "host"], capture_output=True, text=True, timeout=600
        )
        assert setup.returncode == 0, setup.stderr + setup.stdout
    assert "giving /dev/kvm" not in setup.stdout
    assert kvm_access_problem() is None
