"""Hypervisor hosts, the storage pools they reach and the disk files in those pools."""

from __future__ import annotations

from pathlib import Path

from django.db import models

from hypervisors.choices import (
    Accelerator,
    AcceleratorSetting,
    DiskFormat,
    DiskStatus,
    HypervisorMode,
    HypervisorState,
    PoolPurpose,
)


class StoragePool(models.Model):
    """A directory holding disks of one purpose. Hypervisors list the pools they reach."""

    name = models.CharField(max_length=100, unique=True)
    purpose = models.CharField(max_length=16, choices=PoolPurpose.choices)
    path = models.CharField(max_length=500, unique=True)

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

    name = models.CharField(max_length=100, unique=True)
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
    cpu_overcommit = models.FloatField(default=4.0)
    memory_overcommit = models.FloatField(default=1.0)
    tags = models.JSONField(default=list, blank=True)
    storage_pools = models.ManyToManyField(StoragePool, blank=True, related_name="hypervisors")

    created_at = models.DateTimeField(auto_now_add=True)

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
