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


class PlacementPolicy(models.TextChoices):
    """How a start chooses among the hosts that fit; values match `placement.Policy`."""

    MOST_FREE_MEMORY = "most_free_memory", "Most free memory (spread)"
    LEAST_CPU_LOAD = "least_cpu_load", "Least CPU load"
    PACK = "pack", "Pack (fill a host before the next)"
    ROUND_ROBIN = "round_robin", "Round robin"


class DrainPolicy(models.TextChoices):
    """What putting a host in maintenance does to the desktops running on it."""

    MIGRATE = "migrate", "Live-migrate; leave running what cannot move"
    MIGRATE_OR_STOP = "migrate_or_stop", "Live-migrate; shut down what cannot move"
    STOP = "stop", "Shut every desktop down"


class MoveKind(models.TextChoices):
    LIVE_MIGRATION = "live_migration", "Live migration"
    AT_NEXT_START = "at_next_start", "At its next start"
    STOP = "stop", "Shut down"


class MoveReason(models.TextChoices):
    DRAIN = "drain", "Drain"
    BALANCE = "balance", "Rebalance"


class MoveStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"
