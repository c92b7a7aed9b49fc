"""Hypervisor hosts, the storage pools they reach and the disk files in those pools."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

from hypervisors.choices import (
    Accelerator,
    AcceleratorSetting,
    DiskFormat,
    DiskStatus,
    DrainPolicy,
    HypervisorMode,
    HypervisorState,
    MoveKind,
    MoveReason,
    MoveStatus,
    PlacementPolicy,
    PoolPurpose,
)
from isard.core.events import EventManager
from isard.core.text import validate_name


class StoragePool(models.Model):
    """A directory holding disks of one purpose. Hypervisors list the pools they reach."""

    name = models.CharField(validators=[validate_name], max_length=100, unique=True)
    purpose = models.CharField(max_length=16, choices=PoolPurpose.choices)
    path = models.CharField(max_length=500, unique=True)
    shared = models.BooleanField(
        default=False,
        help_text="Every host that reaches this pool mounts the same files at the same path "
        "(NFS, CephFS...): its desktops can be live-migrated between those hosts.",
    )

    def __str__(self) -> str:
        return f"{self.name} ({self.path})"

    @property
    def directory(self) -> Path:
        return Path(self.path)


class Hypervisor(models.Model):
    """A libvirt host that runs desktops.

    `accelerator_setting` is the admin's choice; `accelerator` is what guests are really
    defined with, found by booting a real guest when the setting is "auto" (capabilities
    advertise KVM on hosts where nested KVM crashes every guest).
    """

    name = models.CharField(validators=[validate_name], max_length=100, unique=True)
    uri = models.CharField(max_length=500, help_text="libvirt URI, e.g. qemu:///system")
    accelerator_setting = models.CharField(
        max_length=8, choices=AcceleratorSetting.choices, default=AcceleratorSetting.AUTO
    )
    accelerator = models.CharField(max_length=8, choices=Accelerator.choices, blank=True)
    accelerator_detail = models.TextField(blank=True)
    accelerator_probed_at = models.DateTimeField(null=True, blank=True)

    mode = models.CharField(
        max_length=16, choices=HypervisorMode.choices, default=HypervisorMode.ENABLED
    )
    state = models.CharField(
        max_length=16, choices=HypervisorState.choices, default=HypervisorState.UNKNOWN
    )
    last_error = models.TextField(blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)

    cpus = models.PositiveIntegerField(default=0)
    memory_mib = models.PositiveIntegerField(default=0)
    free_memory_mib = models.PositiveIntegerField(default=0)
    running_domains = models.PositiveIntegerField(default=0)
    # Classroom desktops are mostly idle: 16 vCPUs per core lets a 2-core host take a class
    # of 30 one-vCPU desktops; memory (not overcommitted by default) is the real limit.
    cpu_overcommit = models.FloatField(default=16.0)
    memory_overcommit = models.FloatField(default=1.0)
    tags = models.JSONField(default=list, blank=True)
    storage_pools = models.ManyToManyField(
        StoragePool,
        blank=True,
        related_name="hypervisors",
        help_text="The pools this host reaches; none listed means every pool.",
    )

    created_at = models.DateTimeField(auto_now_add=True)

    #: Share of CPU time busy between the last two samples (1.0 = every CPU busy).
    cpu_load = models.FloatField(default=0.0)
    #: libvirt's cumulative CPU counters at the last sample, to compute the next load.
    cpu_busy_ns = models.BigIntegerField(default=0)
    cpu_total_ns = models.BigIntegerField(default=0)
    #: First failed contact since the last good one; the host goes offline after the grace.
    unreachable_since = models.DateTimeField(null=True, blank=True)
    migration_address = models.CharField(
        max_length=255,
        blank=True,
        help_text="Address other hosts send live migrations to (e.g. on the storage "
        "network); blank: libvirt's default, this host's name.",
    )

    queue = models.CharField(
        max_length=100,
        blank=True,
        validators=[
            RegexValidator(
                r"^[A-Za-z0-9][A-Za-z0-9._:-]*$",
                "A queue name is letters, digits and . _ : - (e.g. hv.lab2).",
            )
        ],
        help_text="Celery queue of the worker that runs this host's libvirt operations, "
        "e.g. hv.lab2 for a worker on that host (`celery -A isard worker -Q hv.lab2`). "
        "Blank: the central worker (the default queue) does.",
    )

    drain_policy = models.CharField(max_length=16, choices=DrainPolicy.choices, blank=True)
    drain_started_at = models.DateTimeField(null=True, blank=True)
    drain_finished_at = models.DateTimeField(null=True, blank=True)
    #: Desktops running here when the drain began: the denominator of its progress.
    drain_total = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return self.name


class Disk(models.Model):
    """One disk file. `parent` is its qcow2 backing file, so templates form a tree on disk.

    A disk with children can never be removed: `on_delete=PROTECT` keeps the chain whole
    even if a service forgets to check.
    """

    pool = models.ForeignKey(StoragePool, on_delete=models.PROTECT, related_name="disks")
    path = models.CharField(max_length=500, unique=True)
    format = models.CharField(max_length=8, choices=DiskFormat.choices, default=DiskFormat.QCOW2)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    read_only = models.BooleanField(default=False)
    status = models.CharField(max_length=16, choices=DiskStatus.choices, default=DiskStatus.READY)
    virtual_size_bytes = models.BigIntegerField(default=0)
    actual_size_bytes = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.path


class HypervisorEvent(models.Model):
    """What happened to a host: offline, back, drain started and finished, moves applied."""

    hypervisor = models.ForeignKey(Hypervisor, on_delete=models.CASCADE, related_name="events")
    message = models.TextField()
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    objects = EventManager()

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.hypervisor}: {self.message}"

    def log_fields(self) -> dict[str, Any]:
        host = self._state.fields_cache.get("hypervisor")
        actor = self._state.fields_cache.get("actor") if self.actor_id else None
        return {
            "kind": "host",
            "id": self.hypervisor_id,
            "name": host.name if host is not None else "",
            "host": host.name if host is not None else "",
            "reason": self.message,
            "actor": actor.username if actor is not None else "",
        }


class HostLoadSample(models.Model):
    """A host's load every few minutes, for the usage page's chart of hosts over time.

    Taken from the samples the fleet monitor already makes (at most one per
    `ISARD_HOST_LOAD_SAMPLE_SECONDS`), kept `ISARD_HOST_LOAD_KEEP_DAYS`.
    """

    hypervisor = models.ForeignKey(Hypervisor, on_delete=models.CASCADE, related_name="+")
    at = models.DateTimeField(db_index=True)
    cpu_load = models.FloatField(help_text="Share of CPU time busy (1.0 = every CPU).")
    memory_mib = models.PositiveIntegerField()
    free_memory_mib = models.PositiveIntegerField()
    running_domains = models.PositiveIntegerField()

    class Meta:
        ordering = ["at", "pk"]
        indexes = [models.Index(fields=["hypervisor", "at"], name="hostload_host_at")]

    def __str__(self) -> str:
        return f"{self.hypervisor_id} at {self.at}: {self.cpu_load:.0%}"


class PlacementRule(models.Model):
    """How the desktops of one course, or one desktop, are placed, instead of the defaults.

    Blank fields fall back: a desktop's rule to its course's, a course's to the
    installation's (`ISARD_PLACEMENT_POLICY`). A forced host is the only host the desktop
    may start on (the start fails if it cannot take it); a favourite host is preferred
    whenever it fits. Required tags are added up (desktop and course).
    """

    course = models.OneToOneField(
        "accounts.Course",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="placement_rule",
    )
    desktop = models.OneToOneField(
        "desktops.Desktop",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="placement_rule",
    )
    policy = models.CharField(
        max_length=24,
        choices=PlacementPolicy.choices,
        blank=True,
        help_text="Blank: the course's policy, else the installation's.",
    )
    forced_hypervisor = models.ForeignKey(
        Hypervisor, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    favourite_hypervisor = models.ForeignKey(
        Hypervisor, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    required_tags = models.JSONField(
        default=list, blank=True, help_text='Host tags the desktops need, e.g. ["gpu"].'
    )

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(models.Q(course__isnull=False) & models.Q(desktop__isnull=True))
                | (models.Q(course__isnull=True) & models.Q(desktop__isnull=False)),
                name="placementrule_course_xor_desktop",
            ),
        ]

    def __str__(self) -> str:
        return f"placement of {self.course or self.desktop}"


class PlacementCharge(models.Model):
    """A start placed on a host that its stats have not shown yet ("in flight").

    Counted against the host until its next stats sample or `ISARD_PLACEMENT_CHARGE_SECONDS`,
    whichever comes first, so a class starting in the same second spreads. Kept a day
    after that: the latest row is the round-robin cursor.
    """

    hypervisor = models.ForeignKey(Hypervisor, on_delete=models.CASCADE, related_name="+")
    desktop = models.ForeignKey(
        "desktops.Desktop", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    memory_mib = models.PositiveIntegerField()
    vcpus = models.PositiveIntegerField()
    created_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"{self.memory_mib} MiB on {self.hypervisor} at {self.created_at:%H:%M:%S}"


class DesktopMove(models.Model):
    """One move of a desktop to another host, planned by a drain or the rebalancer.

    A live migration runs at once (pending, running, done or failed); a move "at next
    start" waits (pending) until the desktop starts again and is placed on `target`.
    """

    desktop = models.ForeignKey("desktops.Desktop", on_delete=models.CASCADE, related_name="moves")
    source = models.ForeignKey(
        Hypervisor, null=True, on_delete=models.SET_NULL, related_name="moves_out"
    )
    target = models.ForeignKey(
        Hypervisor, null=True, blank=True, on_delete=models.SET_NULL, related_name="moves_in"
    )
    kind = models.CharField(max_length=16, choices=MoveKind.choices)
    reason = models.CharField(max_length=16, choices=MoveReason.choices)
    status = models.CharField(
        max_length=16, choices=MoveStatus.choices, default=MoveStatus.PENDING, db_index=True
    )
    detail = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.desktop}: {self.source} → {self.target} ({self.get_kind_display()})"


class Installation(models.Model):
    """This installation's identity, written into every domain it defines.

    Several installations (a school's platform and a test run, say) may share one
    libvirt; a domain of ours whose desktop this database does not know is only taken
    for a leftover when it carries this installation's identity.
    """

    uuid = models.UUIDField(unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return str(self.uuid)
