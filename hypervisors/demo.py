"""The demo guest: one cached image, one hardware profile, one template."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from hypervisors.guest_image import build_tiny_linux
from templates_app.choices import TemplateStatus
from templates_app.models import HardwareProfile, Template
from templates_app.services.templates import template_register_base

DEMO_TEMPLATE_NAME = "Tiny Linux (demo)"
DEMO_PROFILE_NAME = "Tiny Linux"


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


def demo_hardware_profile() -> HardwareProfile:
    profile, _ = HardwareProfile.objects.get_or_create(
        name=DEMO_PROFILE_NAME,
        defaults={
            "vcpus": 1,
            "memory_mib": 192,
            "disk_size_gib": 1,
            "networks": [],  # the tiny guest has no network stack
            "video_model": "qxl",
            "usb_redirect_devices": 2,
        },
    )
    return profile


def demo_template_ensure() -> Template:
    existing = Template.objects.filter(
        name=DEMO_TEMPLATE_NAME, parent__isnull=True, status=TemplateStatus.READY
    ).first()
    if existing is not None:
        return existing
    return template_register_base(
        name=DEMO_TEMPLATE_NAME,
        image=demo_image_ensure(),
        hardware=demo_hardware_profile(),
        description="A tiny Linux that boots in seconds and counts its boots on its own disk.",
    )
