"""Templates (a tree of read-only disks), the hardware desktops get, and install media."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from isard.core.events import StatusEvent
from isard.core.text import validate_name, validate_text
from templates_app.choices import (
    BootDevice,
    DiskBus,
    Firmware,
    MediaKind,
    MediaStatus,
    NicModel,
    TemplateStatus,
    VideoModel,
)


def default_boot_order() -> list[str]:
    return [BootDevice.DISK.value]


def default_networks() -> list[str]:
    return ["default"]


class HardwareProfile(models.Model):
    """The virtual hardware of a desktop, turned into libvirt domain XML by the driver."""

    name = models.CharField(validators=[validate_name], max_length=100, unique=True)
    vcpus = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1), MaxValueValidator(64)]
    )
    memory_mib = models.PositiveIntegerField(
        default=1024, validators=[MinValueValidator(64), MaxValueValidator(262144)]
    )
    disk_bus = models.CharField(max_length=8, choices=DiskBus.choices, default=DiskBus.VIRTIO)
    disk_size_gib = models.PositiveIntegerField(
        default=20, help_text="Size of a new empty disk (desktops installed from an ISO)."
    )
    nic_model = models.CharField(max_length=16, choices=NicModel.choices, default=NicModel.VIRTIO)
    networks = models.JSONField(
        default=default_networks,
        blank=True,
        help_text="libvirt network names, one NIC each. Empty: no network.",
    )
    video_model = models.CharField(max_length=8, choices=VideoModel.choices, default=VideoModel.QXL)
    boot_order = models.JSONField(default=default_boot_order)
    firmware = models.CharField(max_length=8, choices=Firmware.choices, default=Firmware.BIOS)
    graphics_spice = models.BooleanField(default=True)
    graphics_vnc = models.BooleanField(default=True)
    usb_redirect_devices = models.PositiveSmallIntegerField(
        default=2, validators=[MaxValueValidator(8)], help_text="SPICE USB redirection channels."
    )

    def __str__(self) -> str:
        return self.name


class Template(models.Model):
    """A read-only disk that desktops are created from, in a tree through `parent`.

    The disk is protected: while any desktop or derived template depends on it, the
    template cannot be purged (`Disk.parent` and these foreign keys use PROTECT).
    """

    name = models.CharField(validators=[validate_name], max_length=200)
    description = models.TextField(validators=[validate_text], blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="templates",
    )
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    disk = models.ForeignKey(
        "hypervisors.Disk",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="templates",
    )
    hardware = models.ForeignKey(
        HardwareProfile, on_delete=models.PROTECT, related_name="templates"
    )
    status = models.CharField(
        max_length=16, choices=TemplateStatus.choices, default=TemplateStatus.CREATING
    )
    status_reason = models.TextField(blank=True)
    #: For long operations (flatten): how far along, 0-100.
    progress_percent = models.PositiveSmallIntegerField(default=0)
    shared_with_everyone = models.BooleanField(default=False)
    shared_courses = models.ManyToManyField("accounts.Course", blank=True, related_name="templates")
    shared_users = models.ManyToManyField(
        settings.AUTH_USER_MODEL, blank=True, related_name="shared_templates"
    )
    deleted_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class Media(models.Model):
    """An install ISO (or floppy image) registered by path or uploaded."""

    name = models.CharField(validators=[validate_name], max_length=200)
    kind = models.CharField(max_length=8, choices=MediaKind.choices, default=MediaKind.ISO)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="media",
    )
    path = models.CharField(max_length=500, unique=True)
    size_bytes = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64, blank=True)
    status = models.CharField(
        max_length=16, choices=MediaStatus.choices, default=MediaStatus.COPYING
    )
    status_reason = models.TextField(blank=True)
    progress_percent = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "media"

    def __str__(self) -> str:
        return self.name


class TemplateEvent(StatusEvent):
    """One row per status change of a template, oldest first (as desktops have theirs)."""

    template = models.ForeignKey(Template, on_delete=models.CASCADE, related_name="events")
    from_status = models.CharField(max_length=16, choices=TemplateStatus.choices, blank=True)
    to_status = models.CharField(max_length=16, choices=TemplateStatus.choices)

    subject_field = "template"

    class Meta(StatusEvent.Meta):
        pass

    def __str__(self) -> str:
        return f"{self.template}: {self.from_status or '-'} -> {self.to_status}"


class MediaEvent(StatusEvent):
    """One row per status change of install media, oldest first."""

    media = models.ForeignKey(Media, on_delete=models.CASCADE, related_name="events")
    from_status = models.CharField(max_length=16, choices=MediaStatus.choices, blank=True)
    to_status = models.CharField(max_length=16, choices=MediaStatus.choices)

    subject_field = "media"

    class Meta(StatusEvent.Meta):
        pass

    def __str__(self) -> str:
        return f"{self.media}: {self.from_status or '-'} -> {self.to_status}"
