"""Who may open /dev/kvm, decided the kernel's way, and the preflight's one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hypervisors.host_access import DeviceMode, can_read_write, kvm_access_problem, qemu_user


def test_root_may_always_open_the_device() -> None:
    assert can_read_write(DeviceMode(mode=0o20600, uid=0, gid=0), uid=0, gids=frozenset({0}))


def test_a_root_only_device_is_closed_to_the_qemu_user_even_in_the_kvm_group() -> None:
    device = DeviceMode(mode=0o20600, uid=0, gid=0)
    assert not can_read_write(device, uid=64055, gids=frozenset({114, 64055}))


def test_group_read_write_opens_it_to_the_group_only() -> None:
    device = DeviceMode(mode=0o20660, uid=0, gid=114)
    assert can_read_write(device, uid=64055, gids=frozenset({114}))
    assert not can_read_write(device, uid=1000, gids=frozenset({1000}))


def test_the_owner_bits_decide_for_the_owner_even_when_others_may() -> None:
    device = DeviceMode(mode=0o20066, uid=1000, gid=0)
    assert not can_read_write(device, uid=1000, gids=frozenset({1000}))


def test_qemu_user_is_read_from_qemu_conf(tmp_path: Path) -> None:
    conf = tmp_path / "qemu.conf"
    conf.write_text('#user = "libvirt-qemu"\nuser = "nobody"\n')
    assert qemu_user(conf) == "nobody"
    conf.write_text('#user = "root"\n')
    assert qemu_user(conf) == "libvirt-qemu"
    assert qemu_user(tmp_path / "missing.conf") == "libvirt-qemu"


@pytest.fixture
def conf_for_nobody(tmp_path: Path) -> Path:
    conf = tmp_path / "qemu.conf"
    conf.write_text('user = "nobody"\n')
    return conf


def test_a_device_the_qemu_user_cannot_open_is_one_line_naming_the_fix(
    tmp_path: Path, conf_for_nobody: Path
) -> None:
    device = tmp_path / "kvm"
    device.touch()
    os.chmod(device, 0o600)
    problem = kvm_access_problem(device, conf_for_nobody)
    assert problem is not None
    assert "-rw-------" in problem and "nobody cannot open it" in problem
    assert "chmod 0660" in problem and "\n" not in problem
    os.chmod(device, 0o666)
    assert kvm_access_problem(device, conf_for_nobody) is None


def test_no_device_is_no_problem(tmp_path: Path, conf_for_nobody: Path) -> None:
    assert kvm_access_problem(tmp_path / "kvm", conf_for_nobody) is None


def test_an_unknown_qemu_user_is_not_judged(tmp_path: Path) -> None:
    conf = tmp_path / "qemu.conf"
    conf.write_text('user = "no-such-user-here"\n')
    device = tmp_path / "kvm"
    device.touch()
    os.chmod(device, 0o600)
    assert kvm_access_problem(device, conf) is None
