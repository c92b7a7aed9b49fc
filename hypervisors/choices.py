"""Choices for hypervisors and their storage."""

from __future__ import annotations

from django.db import models


class AcceleratorSetting(models.TextChoices):
    AUTO = "auto", "Detect (boot a real guest under KVM, else TCG)"
    KVM = "kvm", "KVM (hardware)"
    QEMU = "qemu", "TCG (software emulation)"


class Accelerator(models.TextChoices):
    """The libvirt `<domain type=...>` a hypervisor's guests are defined with."""

    KVM = "kvm", "KVM"
    QEMU = "qemu", "TCG"


class HypervisorState(models.TextChoices):
    """What the monitor last saw; set only by the monitoring services."""

    UNKNOWN = "unknown", "Not checked yet"
    ONLINE = "online", "Online"
    OFFLINE = "offline", "Offline"


class HypervisorMode(models.TextChoices):
    """What the admin wants: new desktops are placed only on enabled hosts."""

    ENABLED = "enabled", "Enabled"
    MAINTENANCE = "maintenance", "Maintenance (drain)"
    DISABLED = "disabled", "Disabled"


class PoolPurpose(models.TextChoices):
    BASE = "base", "Base images"
    TEMPLATES = "templates", "Template disks"
    DESKTOPS = "desktops", "Desktop disks"
    MEDIA = "media", "ISO and other media"


class DiskFormat(models.TextChoices):
    QCOW2 = "qcow2", "qcow2"
    RAW = "raw", "raw"


class DiskStatus(models.TextChoices):
    READY = "ready", "Ready"
    RECYCLED = "recycled", "In the recycle bin"
