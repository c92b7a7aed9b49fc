"""The demo guest's image: built once from Debian packages and cached."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from hypervisors.guest_image import build_tiny_linux


def demo_image_cache_path() -> Path:
    return Path(settings.ISARD_STORAGE_ROOT) / "cache" / "tiny-linux.qcow2"


def guest_kernel_root() -> Path:
    """Where the guest's kernel comes from: the unpacked package `isardctl` fetched, if any.

    `isardctl` unpacks Debian's cloud kernel into this directory instead of installing it,
    so building a demo guest never adds a kernel to the host's /boot.
    """
    unpacked = Path(settings.ISARD_GUEST_KERNEL_ROOT)
    return unpacked if any((unpacked / "boot").glob("vmlinuz-*")) else Path("/")


def demo_image_ensure() -> Path:
    image = demo_image_cache_path()
    if not image.exists():
        image.parent.mkdir(parents=True, exist_ok=True)
        build_tiny_linux(image, kernel_root=guest_kernel_root())
    return image
