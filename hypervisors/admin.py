from __future__ import annotations

from django.contrib import admin

from hypervisors.models import Disk, Hypervisor, StoragePool


@admin.register(Hypervisor)
class HypervisorAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "uri",
        "mode",
        "state",
        "accelerator",
        "cpus",
        "memory_mib",
        "free_memory_mib",
        "running_domains",
        "last_seen_at",
    )
    list_filter = ("mode", "state", "accelerator")
    readonly_fields = (
        "state",
        "accelerator",
        "accelerator_detail",
        "accelerator_probed_at",
        "last_error",
        "last_seen_at",
        "cpus",
        "memory_mib",
        "free_memory_mib",
        "running_domains",
    )


@admin.register(StoragePool)
class StoragePoolAdmin(admin.ModelAdmin):
    list_display = ("name", "purpose", "path", "disk_count")

    @admin.display(description="disks")
    def disk_count(self, pool: StoragePool) -> int:
        return pool.disks.count()


@admin.register(Disk)
class DiskAdmin(admin.ModelAdmin):
    list_display = (
        "path",
        "pool",
        "parent",
        "read_only",
        "status",
        "virtual_size_bytes",
        "actual_size_bytes",
    )
    list_filter = ("pool", "status", "read_only")
    readonly_fields = [f.name for f in Disk._meta.fields]
