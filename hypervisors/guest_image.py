"""Build a tiny, real, bootable Linux guest disk image from installed Debian packages.

Why this exists: the product must prove that a hypervisor can really run a
guest (the accelerator probe boots it under KVM and falls back to TCG), and the
demo templates need a desktop that boots in seconds, shows real text in a
VNC/SPICE viewer and remembers state across boots.  Downloading a cloud image
is slow, needs network access and is not reproducible, so instead we assemble
a ~16 MB qcow2 from packages that are already on the host:

* the ``linux-image-cloud-amd64`` kernel (virtio drivers are modules, so we
  ship just the few we need in the initramfs),
* ``busybox-static`` as the whole userland (static, because the initramfs has
  no libc),
* ``syslinux`` + ``mtools`` + ``dosfstools`` to make an unpartitioned FAT disk
  that SeaBIOS boots directly - all without root (no loop mounts),
* ``cpio`` to pack the initramfs and ``qemu-utils`` to convert to qcow2.

At every boot the guest mounts its own disk, increments ``/boots.txt`` on it
and prints ``ISARD-GUEST-READY boots=<N>`` on the serial console, so callers
can tell "booted" from "hung" and "persistent overlay" from "fresh base".  An
ACPI power-button press (``virsh shutdown``) makes it sync, print
``ISARD-GUEST-POWEROFF`` and power off by itself, so graceful shutdown paths
are testable too.  The marker is printed only once the power button is being
watched: a shutdown sent after it is never lost, while one sent earlier (in
the BIOS or kernel boot) is lost, as with many real OSes, so callers should
fall back to a hard power off after a timeout.

Only the standard library is used (no Django) so it can run in a worker, a
management command or a test fixture alike.
"""

from __future__ import annotations

import gzip
import lzma
import os
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "GUEST_ERROR_MARKER",
    "GUEST_POWEROFF_MARKER",
    "GUEST_READY_MARKER",
    "REQUIRED_DEBIAN_PACKAGES",
    "GuestImageError",
    "build_tiny_linux",
    "find_kernel",
    "parse_boot_count",
]

#: Printed on the serial console at every boot, followed by `` boots=<N>``.
GUEST_READY_MARKER = "ISARD-GUEST-READY"
#: Printed on the serial console right before an ACPI-requested power off.
GUEST_POWEROFF_MARKER = "ISARD-GUEST-POWEROFF"
#: Printed on the serial console when the guest cannot reach its disk, so a
#: probe can fail fast instead of waiting for a timeout.
GUEST_ERROR_MARKER = "ISARD-GUEST-ERROR"

#: The apt packages the builder needs (gzip/coreutils are essential anyway).
REQUIRED_DEBIAN_PACKAGES: tuple[str, ...] = (
    "linux-image-cloud-amd64",
    "busybox-static",
    "syslinux",
    "mtools",
    "dosfstools",
    "cpio",
    "qemu-utils",
)

# Which package provides each external command, so a missing tool produces an
# error that tells the admin exactly what to `apt install`.
_COMMAND_PACKAGES: Mapping[str, str] = {
    "mkfs.vfat": "dosfstools",
    "syslinux": "syslinux",
    "mcopy": "mtools",
    "cpio": "cpio",
    "qemu-img": "qemu-utils",
}

# Kernel modules the guest needs, in a valid load order for Debian's kernels.
# virtio-blk (disk) + vfat (its filesystem; the default codepage/iocharset of
# Debian's kernels are cp437/ascii) + evdev/button (the ACPI power button as
# /dev/input/eventN, so `virsh shutdown` works) + pvpanic/pvpanic_mmio (QEMU's ISA pvpanic
# device, so a kernel panic reaches libvirt as a crash).  The real order is taken from
# modules.dep when available; this one is the fallback.
_GUEST_MODULES: tuple[str, ...] = (
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_blk",
    "fat",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "evdev",
    "button",
    "pvpanic",
    "pvpanic_mmio",
)

_BUSYBOX = Path("/bin/busybox")
_BOOT_DIR = Path("/boot")
_MODULE_ROOTS: tuple[Path, ...] = (Path("/lib/modules"), Path("/usr/lib/modules"))
# mkfs.vfat lives in /usr/sbin, which is often not on a service user's PATH.
_EXTRA_TOOL_DIRS: tuple[str, ...] = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")
_MODULE_SUFFIXES: tuple[str, ...] = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
_COMMAND_TIMEOUT_S = 300
_MIB = 1024 * 1024
# Room for the FAT tables, syslinux's ldlinux.sys/.c32 and the guest's files.
_DISK_OVERHEAD_BYTES = 2 * _MIB

# ELF header fields read by _is_static_elf (see elf(5)).
_ELF_HEADER_SIZE = 64
_ELFCLASS64 = 2
_ELFDATA2LSB = 1
_PT_INTERP = 3

_BOOT_COUNT_RE = re.compile(re.escape(GUEST_READY_MARKER) + r" boots=(\d+)")

# Kernel command line.  `console=ttyS0` last makes the serial port
# /dev/console (init's stdout) while tty0 still gets kernel messages for the
# viewer; `quiet` keeps the serial log short, which matters under TCG where
# every emulated UART byte costs time; `consoleblank=0` keeps the screen a
# viewer shows from going black after an idle spell; `no_timer_check` skips the
# boot-time check of the IO-APIC timer, which a vCPU starved by thirty others under
# TCG fails ("Kernel panic - IO-APIC + timer doesn't work!"), as cloud images do.
_KERNEL_CMDLINE = "console=tty0 console=ttyS0 quiet loglevel=3 consoleblank=0 no_timer_check"

# The guest's /init.  `@MODULES@` is replaced by the module names in load
# order.  Kept POSIX-sh/busybox-ash compatible; it must never exit, because
# PID 1 exiting is a kernel panic.
_INIT_TEMPLATE = r"""#!/bin/sh
# /init of the isard tiny demo guest (generated by hypervisors/guest_image.py).
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin /proc /sys /dev /mnt /tmp
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
export HOME=/ PS1='isard-tiny# '

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

say() {
    # Serial console (what the product parses) and the screen (what a viewer shows).
    echo "$*" > /dev/ttyS0
    echo "$*" > /dev/tty0
}

for m in @MODULES@; do
    insmod "/lib/modules/$m.ko" || say "ISARD-GUEST-WARN insmod $m failed"
done

# Watch the power button first, so an early `virsh shutdown` is not lost
# while the disk is still being mounted.
power_button() {
    for ev in /sys/class/input/event*; do
        if [ "$(cat "$ev/device/name" 2>/dev/null)" = "Power Button" ]; then
            echo "/dev/input/${ev##*/}"
            return 0
        fi
    done
    return 1
}

watch_power_button() {
    btn=""
    i=0
    while [ "$i" -lt 100 ]; do
        btn=$(power_button) && [ -c "$btn" ] && break
        btn=""
        sleep 0.1
        i=$((i + 1))
    done
    if [ -z "$btn" ]; then
        say "ISARD-GUEST-WARN no ACPI power button; shutdown needs a hard power off"
        : > /tmp/power-button.none
        return
    fi
    # evdev only queues events for readers that have the device open, so open
    # it before telling the main flow we are listening.
    exec 3< "$btn"
    : > /tmp/power-button.ready
    # One input_event (24 bytes on 64-bit) = the button was pressed.
    head -c 24 <&3 > /dev/null
    say "ISARD-GUEST-POWEROFF"
    sync
    umount /mnt 2>/dev/null || mount -o remount,ro /mnt 2>/dev/null
    poweroff -f
}

watch_power_button < /dev/null &

# virtio-blk normally probes synchronously, but do not trust it forever.
i=0
while [ ! -b /dev/vda ] && [ "$i" -lt 300 ]; do
    sleep 0.1
    i=$((i + 1))
done

n=""
if [ ! -b /dev/vda ]; then
    say "ISARD-GUEST-ERROR no /dev/vda (is the disk on the virtio bus?)"
elif ! mount -t vfat -o rw /dev/vda /mnt; then
    say "ISARD-GUEST-ERROR cannot mount /dev/vda"
else
    n=$(cat /mnt/boots.txt 2>/dev/null)
    case "$n" in
        '' | *[!0-9]*) n=0 ;;
    esac
    n=$((n + 1))
    echo "$n" > /mnt/boots.txt
    sync
    # Announce READY only once the power button is watched, so an ACPI
    # shutdown sent after the marker is never lost.
    i=0
    while [ ! -e /tmp/power-button.ready ] && [ ! -e /tmp/power-button.none ] \
        && [ "$i" -lt 120 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    # The screen first, the serial marker last: whoever waits for the marker
    # (a test, the readiness probe) then finds the same text on the screen.
    printf '\033[2J\033[H' > /dev/tty0
    cat > /dev/tty0 <<EOF

  ==========================================================
    Tiny Linux (isard demo) - ISARD-GUEST-READY boots=$n
  ==========================================================

  Kernel $(uname -r), busybox userland.
  This disk has been booted $n time(s) (see /mnt/boots.txt).
  Press the ACPI power button (Shut down) to power off cleanly.

EOF
    echo "ISARD-GUEST-READY boots=$n" > /dev/ttyS0
fi

# An interactive shell on the first VT, restarted forever: init must not exit.
while :; do
    setsid -c sh < /dev/tty1 > /dev/tty1 2>&1
    sleep 1
done
"""


class GuestImageError(Exception):
    """The tiny guest image cannot be built; the message says what to install or fix."""


def _missing_package_error(what: str, package: str) -> GuestImageError:
    return GuestImageError(
        f"{what} not found: install the Debian package {package!r} "
        f"(the tiny guest builder needs: {' '.join(REQUIRED_DEBIAN_PACKAGES)})"
    )


def _which(command: str) -> Path:
    """Resolve a build tool, also looking in sbin dirs a service PATH may lack."""
    search = os.pathsep.join([os.environ.get("PATH", ""), *_EXTRA_TOOL_DIRS])
    found = shutil.which(command, path=search)
    if found is None:
        raise _missing_package_error(
            f"command {command!r}", _COMMAND_PACKAGES.get(command, command)
        )
    return Path(found)


def _run(
    argv: Sequence[str | Path],
    *,
    cwd: Path | None = None,
    stdin: bytes | None = None,
) -> bytes:
    """Run a build step, turning any failure into a GuestImageError with its stderr."""
    args = [str(a) for a in argv]
    env = dict(os.environ)
    # mtools refuses images whose geometry it dislikes unless told not to check.
    env["MTOOLS_SKIP_CHECK"] = "1"
    env["LC_ALL"] = "C"
    try:
        proc = subprocess.run(
            args,
            cwd=cwd,
            input=stdin,
            capture_output=True,
            env=env,
            timeout=_COMMAND_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError as exc:
        raise GuestImageError(f"cannot run {args[0]}: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise GuestImageError(
            f"{' '.join(args)} did not finish within {_COMMAND_TIMEOUT_S}s"
        ) from exc
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip()[-2000:]
        raise GuestImageError(f"{' '.join(args)} failed with exit code {proc.returncode}: {detail}")
    return proc.stdout


def _is_static_elf(path: Path) -> bool:
    """Tell whether an ELF executable lacks a PT_INTERP (dynamic loader) header.

    A dynamically linked busybox would die in the initramfs, which has no libc,
    so the regular ``busybox`` package is not enough: we need ``busybox-static``.
    """
    try:
        with path.open("rb") as fh:
            ident = fh.read(_ELF_HEADER_SIZE)
            if len(ident) < _ELF_HEADER_SIZE or ident[:4] != b"\x7fELF":
                return False
            endian = "<" if ident[5] == _ELFDATA2LSB else ">"
            if ident[4] == _ELFCLASS64:
                (phoff,) = struct.unpack_from(endian + "Q", ident, 32)
                phentsize, phnum = struct.unpack_from(endian + "HH", ident, 54)
            else:
                (phoff,) = struct.unpack_from(endian + "I", ident, 28)
                phentsize, phnum = struct.unpack_from(endian + "HH", ident, 42)
            fh.seek(phoff)
            table = fh.read(phentsize * phnum)
    except OSError:
        return False
    for index in range(phnum):
        offset = index * phentsize
        if offset + 4 > len(table):
            return False
        (p_type,) = struct.unpack_from(endian + "I", table, offset)
        if p_type == _PT_INTERP:
            return False
    return True


def _find_busybox() -> Path:
    if not _BUSYBOX.is_file():
        raise _missing_package_error(str(_BUSYBOX), "busybox-static")
    if not _is_static_elf(_BUSYBOX):
        raise GuestImageError(
            f"{_BUSYBOX} is not a statically linked executable; install the "
            "Debian package 'busybox-static' (it replaces 'busybox')"
        )
    return _BUSYBOX


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Build a natural sort key, so 6.1.0-56 sorts after 6.1.0-9."""
    parts = re.split(r"(\d+)", version)
    return tuple((1, int(p)) if p.isdigit() else (0, p) for p in parts if p)


def _module_name(filename: str) -> str:
    """Turn a module file name into its name: ``virtio-pci.ko.xz`` -> ``virtio_pci``."""
    for suffix in _MODULE_SUFFIXES:
        if filename.endswith(suffix):
            filename = filename[: -len(suffix)]
            break
    return filename.replace("-", "_")


def _read_modules_dep(modules_dir: Path) -> dict[str, tuple[Path, list[str]]]:
    """Map module name -> (file, dependency names) from depmod's modules.dep."""
    result: dict[str, tuple[Path, list[str]]] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        target, sep, deps = line.partition(":")
        if not sep:
            continue
        name = _module_name(Path(target).name)
        dep_names = [_module_name(Path(d).name) for d in deps.split()]
        result[name] = (modules_dir / target, dep_names)
    return result


def _read_builtin(modules_dir: Path) -> set[str]:
    path = modules_dir / "modules.builtin"
    if not path.is_file():
        return set()
    return {
        _module_name(Path(line.strip()).name)
        for line in path.read_text().splitlines()
        if line.strip()
    }


def _order_from_modules_dep(
    modules_dir: Path, builtin: set[str]
) -> tuple[list[tuple[str, Path]], list[str]]:
    """Order the wanted modules after their dependencies, using depmod's data."""
    dep_map = _read_modules_dep(modules_dir)
    ordered: list[tuple[str, Path]] = []
    missing: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        if name in dep_map:
            path, deps = dep_map[name]
            for dep in deps:
                visit(dep)
            ordered.append((name, path))
        elif name not in builtin:
            missing.append(name)

    for wanted in _GUEST_MODULES:
        visit(wanted)
    return ordered, missing


def _order_by_search(
    modules_dir: Path, builtin: set[str]
) -> tuple[list[tuple[str, Path]], list[str]]:
    """Locate the wanted modules without depmod's data, trusting the static order."""
    found: dict[str, Path] = {}
    for root, _dirs, files in os.walk(modules_dir / "kernel"):
        for filename in files:
            name = _module_name(filename)
            if name in _GUEST_MODULES and filename.endswith(_MODULE_SUFFIXES):
                found.setdefault(name, Path(root) / filename)
    ordered = [(name, found[name]) for name in _GUEST_MODULES if name in found]
    missing = [name for name in _GUEST_MODULES if name not in found and name not in builtin]
    return ordered, missing


def _resolve_modules(modules_dir: Path) -> list[tuple[str, Path]]:
    """List (name, file) of each module the guest must insmod, dependencies first.

    Modules built into this kernel are skipped.  Raises GuestImageError naming
    the missing modules if the kernel cannot provide them, so find_kernel can
    skip kernels that would produce a guest unable to see its own disk.
    """
    builtin = _read_builtin(modules_dir)
    if (modules_dir / "modules.dep").is_file():
        ordered, missing = _order_from_modules_dep(modules_dir, builtin)
    else:
        ordered, missing = _order_by_search(modules_dir, builtin)
    if missing:
        raise GuestImageError(f"kernel modules {', '.join(missing)} not found under {modules_dir}")
    absent = [str(path) for _name, path in ordered if not path.is_file()]
    if absent:
        raise GuestImageError(f"kernel module files missing: {', '.join(absent)}")
    return ordered


def _modules_dir_for(version: str, root: Path) -> Path | None:
    for modules_root in _MODULE_ROOTS:
        candidate = root / modules_root.relative_to("/") / version
        if candidate.is_dir():
            return candidate
    return None


def find_kernel(root: Path = Path("/")) -> tuple[Path, Path]:
    """Return (vmlinuz, modules dir) of the kernel to put in the guest.

    The newest readable ``*-cloud-amd64`` kernel is preferred: it is small and
    has virtio as modules.  Any other installed kernel whose modules directory
    provides the needed modules is the fallback.  `root` is where the kernel
    package's files are: "/" for an installed kernel, or a directory where the
    .deb was unpacked (`dpkg-deb -x`), so the host's own boot setup is untouched.
    """
    candidates: list[tuple[Path, str]] = []
    for vmlinuz in (root / _BOOT_DIR.relative_to("/")).glob("vmlinuz-*"):
        version = vmlinuz.name.removeprefix("vmlinuz-")
        if vmlinuz.is_file():
            candidates.append((vmlinuz, version))
    # Cloud kernels first, then newest first within each group.
    candidates.sort(key=lambda c: _version_key(c[1]), reverse=True)
    candidates.sort(key=lambda c: not c[1].endswith("-cloud-amd64"))

    problems: list[str] = []
    for vmlinuz, version in candidates:
        if not os.access(vmlinuz, os.R_OK):
            problems.append(f"{vmlinuz} is not readable by this user")
            continue
        modules_dir = _modules_dir_for(version, root)
        if modules_dir is None:
            problems.append(f"no modules directory for {version}")
            continue
        try:
            _resolve_modules(modules_dir)
        except GuestImageError as exc:
            problems.append(str(exc))
            continue
        return vmlinuz, modules_dir

    detail = f" ({'; '.join(problems)})" if problems else ""
    raise GuestImageError(
        f"no usable kernel in {root / 'boot'}: install or unpack the Debian package "
        f"'linux-image-cloud-amd64'{detail}"
    )


def _module_bytes(path: Path) -> bytes:
    """Return the uncompressed .ko, since busybox insmod cannot read compressed ones."""
    name = path.name
    if name.endswith(".ko"):
        return path.read_bytes()
    if name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if name.endswith(".ko.gz"):
        return gzip.decompress(path.read_bytes())
    if name.endswith(".ko.zst"):
        try:
            zstd = _which("zstd")
        except GuestImageError as exc:
            raise GuestImageError(
                f"{path} is zstd-compressed: install the Debian package 'zstd'"
            ) from exc
        return _run([zstd, "-q", "-d", "-c", path])
    raise GuestImageError(f"unsupported kernel module format: {path}")


def _init_script(module_names: Iterable[str]) -> str:
    return _INIT_TEMPLATE.replace("@MODULES@", " ".join(module_names))


def _stage_initramfs(root: Path, busybox: Path, modules: Sequence[tuple[str, Path]]) -> None:
    """Lay out the initramfs tree: busybox, flat module dir and /init."""
    for sub in (
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "dev",
        "proc",
        "sys",
        "mnt",
        "tmp",
    ):
        (root / sub).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(busybox, root / "bin" / "busybox")
    (root / "bin" / "busybox").chmod(0o755)
    (root / "bin" / "sh").symlink_to("busybox")
    module_dir = root / "lib" / "modules"
    module_dir.mkdir(parents=True)
    for name, path in modules:
        (module_dir / f"{name}.ko").write_bytes(_module_bytes(path))
    init = root / "init"
    init.write_text(_init_script(name for name, _path in modules))
    init.chmod(0o755)


def _pack_initramfs(root: Path, cpio: Path, dest: Path) -> None:
    """``find . | cpio -o -H newc | gzip``, with every file owned by root.

    ``-R 0:0`` lets a non-root builder produce the same archive as root.  The
    kernel's built-in initramfs already provides /dev/console, so no device
    nodes (which would need root to create) are required here.
    """
    names: list[str] = ["."]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = Path(dirpath).relative_to(root)
        names.extend(f"./{(rel / e).as_posix()}" for e in sorted(dirnames + filenames))
    listing = ("\n".join(names) + "\n").encode()
    archive = _run([cpio, "--quiet", "-o", "-H", "newc", "-R", "0:0"], cwd=root, stdin=listing)
    dest.write_bytes(gzip.compress(archive, compresslevel=9, mtime=0))


def _syslinux_cfg() -> str:
    return (
        "DEFAULT linux\n"
        "PROMPT 0\n"
        "TIMEOUT 0\n"
        "LABEL linux\n"
        "  KERNEL vmlinuz\n"
        f"  APPEND initrd=initrd.gz {_KERNEL_CMDLINE}\n"
    )


def build_tiny_linux(dest: Path, *, size_mib: int = 64, kernel_root: Path = Path("/")) -> Path:
    """Write the tiny guest as a qcow2 at ``dest`` and return ``dest``.

    The image is an unpartitioned FAT disk with syslinux, the kernel and a
    busybox initramfs; see the module docstring for what the guest does.  It
    is built in a temporary directory next to ``dest`` and moved into place
    with ``os.replace``, so a concurrent reader never sees a half-written
    image and a failed build leaves no debris.
    """
    dest = Path(dest)
    if size_mib <= 0:
        raise GuestImageError(f"size_mib must be positive, got {size_mib}")
    tools = {name: _which(name) for name in _COMMAND_PACKAGES}
    busybox = _find_busybox()
    vmlinuz, modules_dir = find_kernel(kernel_root)
    modules = _resolve_modules(modules_dir)

    dest.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        staging = workdir / "initramfs"
        staging.mkdir()
        _stage_initramfs(staging, busybox, modules)
        payload = workdir / "payload"
        payload.mkdir()
        _pack_initramfs(staging, tools["cpio"], payload / "initrd.gz")
        shutil.copyfile(vmlinuz, payload / "vmlinuz")
        (payload / "syslinux.cfg").write_text(_syslinux_cfg())

        needed = sum(p.stat().st_size for p in payload.iterdir()) + _DISK_OVERHEAD_BYTES
        if size_mib * _MIB < needed:
            raise GuestImageError(
                f"size_mib={size_mib} is too small: kernel and initramfs need "
                f"at least {-(-needed // _MIB)} MiB"
            )

        raw = workdir / "disk.raw"
        with raw.open("wb") as fh:
            fh.truncate(size_mib * _MIB)
        _run([tools["mkfs.vfat"], "-n", "ISARDTINY", raw])
        _run([tools["syslinux"], "--install", raw])
        _run(
            [
                tools["mcopy"],
                "-i",
                raw,
                payload / "vmlinuz",
                payload / "initrd.gz",
                payload / "syslinux.cfg",
                "::/",
            ]
        )
        qcow2 = workdir / "disk.qcow2"
        _run([tools["qemu-img"], "convert", "-f", "raw", "-O", "qcow2", raw, qcow2])
        qcow2.chmod(0o644)
        qcow2.replace(dest)  # os.replace: atomic within the directory
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return dest


def parse_boot_count(serial_log_text: str) -> int | None:
    """Return N of the last ``ISARD-GUEST-READY boots=N`` in a serial log, or None.

    The last one counts because a log may hold several boots: libvirt truncates
    a ``<serial type='file'>`` log at each start, but not with
    ``<source append='on'/>`` or when a console stream is captured by hand.
    """
    matches = _BOOT_COUNT_RE.findall(serial_log_text)
    if not matches:
        return None
    return int(matches[-1])
