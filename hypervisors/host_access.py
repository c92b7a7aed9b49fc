"""Whether libvirt's QEMU user can open /dev/kvm on this machine.

Without udev (containers, minimal hosts) /dev/kvm stays `crw------- root root`. libvirt then
probes QEMU's capabilities as root, which can open the device, and checks it again for its
QEMU user, which cannot: the cached capabilities are invalid at every lookup, so every
define and start waits behind a new probe (about 30 s each here). `./isardctl host` gives
the device to the `kvm` group, mode 0660, as Debian's udev rule does; the preflight says so
when it has not been done.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import stat
from dataclasses import dataclass
from pathlib import Path

KVM_DEVICE = Path("/dev/kvm")
QEMU_CONF = Path("/etc/libvirt/qemu.conf")
# Debian's libvirt runs guests as this user unless qemu.conf says otherwise.
DEFAULT_QEMU_USER = "libvirt-qemu"


@dataclass(frozen=True)
class DeviceMode:
    """What `stat` says of a device: its mode bits, owner and group ids."""

    mode: int
    uid: int
    gid: int


def can_read_write(device: DeviceMode, *, uid: int, gids: frozenset[int]) -> bool:
    """The kernel's permission rule for one user on one device (root may always)."""
    if uid == 0:
        return True
    if uid == device.uid:
        wanted = stat.S_IRUSR | stat.S_IWUSR
    elif device.gid in gids:
        wanted = stat.S_IRGRP | stat.S_IWGRP
    else:
        wanted = stat.S_IROTH | stat.S_IWOTH
    return device.mode & wanted == wanted


def qemu_user(conf: Path = QEMU_CONF) -> str:
    """The user libvirt runs QEMU as (qemu.conf's `user`, else Debian's default)."""
    try:
        text = conf.read_text()
    except OSError:
        return DEFAULT_QEMU_USER
    match = re.search(r'^\s*user\s*=\s*"([^"]+)"', text, re.MULTILINE)
    return match.group(1) if match else DEFAULT_QEMU_USER


def _user_ids(user: str) -> tuple[int, frozenset[int]] | None:
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    return entry.pw_uid, frozenset(os.getgrouplist(user, entry.pw_gid))


def _describe(device: DeviceMode) -> str:
    def name(lookup: object, number: int) -> str:
        try:
            return str(lookup(number)[0])  # type: ignore[operator]
        except KeyError:
            return str(number)

    return (
        f"{stat.filemode(device.mode)} {name(pwd.getpwuid, device.uid)}:"
        f"{name(grp.getgrgid, device.gid)}"
    )


def kvm_access_problem(device: Path = KVM_DEVICE, conf: Path = QEMU_CONF) -> str | None:
    """One line saying why libvirt's capabilities cannot stay valid here, or None."""
    try:
        status = device.stat()
    except FileNotFoundError:
        return None  # no KVM at all: libvirt uses TCG and its capabilities stay valid
    user = qemu_user(conf)
    ids = _user_ids(user)
    if ids is None:
        return None  # a libvirt without that user (not Debian's packages): not ours to judge
    mode = DeviceMode(mode=status.st_mode, uid=status.st_uid, gid=status.st_gid)
    if can_read_write(mode, uid=ids[0], gids=ids[1]):
        return None
    return (
        f"{device} is {_describe(mode)}, so libvirt's QEMU user {user} cannot open it and "
        "libvirt probes QEMU again before every define and start (each waits about 30 s, "
        "then times out): run `./isardctl host` (or `chgrp kvm /dev/kvm && chmod 0660 "
        "/dev/kvm`, what Debian's udev rule does)."
    )
