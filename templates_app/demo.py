"""The demo template: the demo guest's image as a base template, with its hardware profile."""

from __future__ import annotations

from hypervisors.demo import demo_image_ensure
from templates_app.choices import TemplateStatus
from templates_app.models import HardwareProfile, Template
from templates_app.services.templates import template_register_base

DEMO_TEMPLATE_NAME = "Tiny Linux (demo)"


DEMO_PROFILE_NAME = "Tiny Linux"


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
