"""Choices for templates, hardware profiles and media."""

from __future__ import annotations

from django.db import models


class DiskBus(models.TextChoices):
    VIRTIO = "virtio", "VirtIO"
    SATA = "sata", "SATA"
    IDE = "ide", "IDE"


class VideoModel(models.TextChoices):
    QXL = "qxl", "QXL (best with SPICE)"
    VIRTIO = "virtio", "VirtIO GPU"
    VGA = "vga", "Standard VGA"


class NicModel(models.TextChoices):
    VIRTIO = "virtio", "VirtIO"
    E1000 = "e1000", "Intel e1000"
    RTL8139 = "rtl8139", "Realtek 8139"


class Firmware(models.TextChoices):
    BIOS = "bios", "BIOS"
    UEFI = "uefi", "UEFI"


class BootDevice(models.TextChoices):
    DISK = "hd", "Disk"
    CDROM = "cdrom", "CD-ROM"
    NETWORK = "network", "Network (PXE)"


class TemplateStatus(models.TextChoices):
    CREATING = "creating", "Creating"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"
    DELETED = "deleted", "In the recycle bin"


class MediaKind(models.TextChoices):
    ISO = "iso", "CD/DVD image (ISO)"
    FLOPPY = "floppy", "Floppy image"


class MediaStatus(models.TextChoices):
    UPLOADING = "uploading", "Uploading"
    VERIFYING = "verifying", "Checking the upload"
    COPYING = "copying", "Copying"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"


T = TemplateStatus

#: The only changes a template's status may make (`templates_app.services.transitions`).
TEMPLATE_TRANSITIONS: dict[TemplateStatus, frozenset[TemplateStatus]] = {
    T.CREATING: frozenset({T.READY, T.FAILED}),
    T.READY: frozenset({T.DELETED}),
    T.FAILED: frozenset({T.DELETED}),
    T.DELETED: frozenset({T.READY}),
}

M = MediaStatus

#: The only changes install media's status may make.
MEDIA_TRANSITIONS: dict[MediaStatus, frozenset[MediaStatus]] = {
    M.UPLOADING: frozenset({M.VERIFYING, M.FAILED}),
    M.VERIFYING: frozenset({M.READY, M.FAILED}),
    M.COPYING: frozenset({M.READY, M.FAILED}),
    M.READY: frozenset(),
    M.FAILED: frozenset(),
}
