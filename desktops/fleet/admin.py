"""The fleet in the admin: hosts with their load and drains, storage pools, disks,
placement rules and moves (the models are the hosts' room's; the pages act on desktops)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import Count, Q, QuerySet, Sum
from django.http import HttpRequest
from django.template.defaultfilters import filesizeformat

from accounts.admin_scope import ReadOnlyForManagersAdmin, RoleScopedMixin
from accounts.models import User
from desktops.fleet.drain import hypervisor_drain
from desktops.fleet.rebalancing import hypervisors_rebalance
from desktops.fleet.selectors import BOOKED_STATUSES, drain_progress
from desktops.services.orphans import orphan_files
from hypervisors.choices import DrainPolicy
from hypervisors.models import (
    DesktopMove,
    Disk,
    Hypervisor,
    HypervisorEvent,
    PlacementRule,
    StoragePool,
)
from hypervisors.selectors import storage_pool_usage
from hypervisors.services.hosts import hypervisor_enable
from isard.core.errors import ApplicationError


def _percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole > 0 else "-"


class HypervisorEventInline(RoleScopedMixin, admin.TabularInline):
    model = HypervisorEvent
    extra = 0
    can_delete = False
    fields = ("created_at", "message", "actor")
    readonly_fields = fields
    manager_access = "read"

    def scope_queryset(self, actor: User, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Hypervisor)
class HypervisorAdmin(ReadOnlyForManagersAdmin):
    # What an administrator watches first (state and load), then what describes the host.
    list_display = (
        "name",
        "state",
        "mode",
        "cpu_load_percent",
        "memory_in_use",
        "memory_booked",
        "desktops_here",
        "drain",
        "last_seen_at",
        "accelerator",
        "cpus",
        "memory_mib",
        "queue",
        "uri",
    )
    list_filter = ("mode", "state", "accelerator")
    readonly_fields = (
        "state",
        "accelerator",
        "accelerator_detail",
        "accelerator_probed_at",
        "last_error",
        "last_seen_at",
        "unreachable_since",
        "cpus",
        "memory_mib",
        "free_memory_mib",
        "running_domains",
        "cpu_load",
        "drain_policy",
        "drain_started_at",
        "drain_finished_at",
        "drain_total",
        "drain",
    )
    exclude = ("cpu_busy_ns", "cpu_total_ns")
    inlines = (HypervisorEventInline,)

    class Media:
        js = ("isard/admin_live.js",)  # the load columns follow the monitor without a reload

    actions = (
        "drain_migrate_or_stop",
        "drain_migrate",
        "drain_stop",
        "enable",
        "rebalance_now",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Hypervisor]:
        booked = Q(desktops__status__in=BOOKED_STATUSES)
        return (
            super()
            .get_queryset(request)
            .annotate(
                booked_memory=Sum("desktops__hardware__memory_mib", filter=booked),
                booked_desktops=Count("desktops", filter=booked),
            )
        )

    @admin.display(description="memory in use")
    def memory_in_use(self, hypervisor: Hypervisor) -> str:
        return _percent(hypervisor.memory_mib - hypervisor.free_memory_mib, hypervisor.memory_mib)

    @admin.display(description="memory booked")
    def memory_booked(self, hypervisor: Hypervisor) -> str:
        booked = getattr(hypervisor, "booked_memory", None) or 0
        return _percent(booked, hypervisor.memory_mib * hypervisor.memory_overcommit)

    @admin.display(description="CPU load")
    def cpu_load_percent(self, hypervisor: Hypervisor) -> str:
        return _percent(hypervisor.cpu_load, 1.0)

    @admin.display(description="desktops")
    def desktops_here(self, hypervisor: Hypervisor) -> int:
        return int(getattr(hypervisor, "booked_desktops", 0) or 0)

    @admin.display(description="drain")
    def drain(self, hypervisor: Hypervisor) -> str:
        progress = drain_progress(hypervisor)
        return str(progress) if progress is not None else "-"

    def _drain(
        self, request: HttpRequest, queryset: QuerySet[Hypervisor], policy: DrainPolicy
    ) -> None:
        for hypervisor in queryset:
            try:
                hypervisor = hypervisor_drain(
                    actor=request.user,  # type: ignore[arg-type]
                    hypervisor=hypervisor,
                    policy=policy,
                )
            except ApplicationError as error:
                self.message_user(request, f"{hypervisor}: {error.message}", messages.ERROR)
                continue
            self.message_user(
                request,
                f"{hypervisor}: in maintenance, draining {hypervisor.drain_total} desktops "
                f"({policy.label.lower()}); the drain column shows the progress.",
            )

    @admin.action(description="Maintenance: drain (live-migrate, shut down the rest)")
    def drain_migrate_or_stop(self, request: HttpRequest, queryset: QuerySet[Hypervisor]) -> None:
        self._drain(request, queryset, DrainPolicy.MIGRATE_OR_STOP)

    @admin.action(description="Maintenance: drain (live-migrate only)")
    def drain_migrate(self, request: HttpRequest, queryset: QuerySet[Hypervisor]) -> None:
        self._drain(request, queryset, DrainPolicy.MIGRATE)

    @admin.action(description="Maintenance: drain (shut every desktop down)")
    def drain_stop(self, request: HttpRequest, queryset: QuerySet[Hypervisor]) -> None:
        self._drain(request, queryset, DrainPolicy.STOP)

    @admin.action(description="Enable (end maintenance)")
    def enable(self, request: HttpRequest, queryset: QuerySet[Hypervisor]) -> None:
        for hypervisor in queryset:
            try:
                hypervisor_enable(actor=request.user, hypervisor=hypervisor)  # type: ignore[arg-type]
            except ApplicationError as error:
                self.message_user(request, f"{hypervisor}: {error.message}", messages.ERROR)

    @admin.action(description="Rebalance the fleet now")
    def rebalance_now(self, request: HttpRequest, queryset: QuerySet[Hypervisor]) -> None:
        result = hypervisors_rebalance()
        if result.skipped:
            self.message_user(request, f"Not rebalanced: {result.skipped}", messages.WARNING)
            return
        self.message_user(
            request,
            f"Rebalanced: {result.migrated} live-migrated, {result.at_next_start} moved at "
            f"their next start, {result.failed} failed; spread of memory use "
            f"{result.spread_before:.0%} → {result.spread_after:.0%}.",
        )


@admin.register(StoragePool)
class StoragePoolAdmin(ReadOnlyForManagersAdmin):
    list_display = (
        "name",
        "purpose",
        "path",
        "shared",
        "disk_count",
        "used",
        "filesystem_free",
        "stray_files",
    )
    readonly_fields = ("disk_count", "used", "virtual", "filesystem_free", "stray_files")

    class Media:
        js = ("isard/admin_live.js",)

    @admin.display(description="disks")
    def disk_count(self, pool: StoragePool) -> int:
        return storage_pool_usage(pool).disks

    @admin.display(description="used on disk")
    def used(self, pool: StoragePool) -> str:
        return filesizeformat(storage_pool_usage(pool).used_bytes)

    @admin.display(description="virtual size of its disks")
    def virtual(self, pool: StoragePool) -> str:
        return filesizeformat(storage_pool_usage(pool).virtual_bytes)

    @admin.display(description="file system free")
    def filesystem_free(self, pool: StoragePool) -> str:
        usage = storage_pool_usage(pool)
        if usage.filesystem_total_bytes is None or usage.filesystem_free_bytes is None:
            return "unreachable"
        share = _percent(usage.filesystem_free_bytes, usage.filesystem_total_bytes)
        return f"{filesizeformat(usage.filesystem_free_bytes)} ({share})"

    @admin.display(description="files no disk names")
    def stray_files(self, pool: StoragePool) -> str:
        found = orphan_files(pools=[pool])
        if not found:
            return "none"
        size = filesizeformat(sum(orphan.size_bytes for orphan in found))
        return f"{len(found)} ({size}): manage.py isard_orphans lists and removes them"


@admin.register(Disk)
class DiskAdmin(ReadOnlyForManagersAdmin):
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


@admin.register(PlacementRule)
class PlacementRuleAdmin(ReadOnlyForManagersAdmin):
    list_display = (
        "__str__",
        "policy",
        "forced_hypervisor",
        "favourite_hypervisor",
        "required_tags",
    )
    list_filter = ("policy",)
    raw_id_fields = ("course", "desktop")

    def scope_queryset(self, actor: User, queryset: QuerySet[Any]) -> QuerySet[Any]:
        """Managers see the fleet-wide rules and those of their school's courses and desktops."""
        return queryset.filter(
            Q(course__isnull=True, desktop__isnull=True)
            | Q(course__school_id=actor.school_id)
            | Q(desktop__owner__school_id=actor.school_id)
        )


@admin.register(DesktopMove)
class DesktopMoveAdmin(ReadOnlyForManagersAdmin):
    list_display = (
        "desktop",
        "source",
        "target",
        "kind",
        "reason",
        "status",
        "detail",
        "created_at",
        "finished_at",
    )
    list_filter = ("status", "kind", "reason", "source", "target")
    readonly_fields = [f.name for f in DesktopMove._meta.fields]

    def scope_queryset(self, actor: User, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(desktop__owner__school_id=actor.school_id)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(HypervisorEvent)
class HypervisorEventAdmin(ReadOnlyForManagersAdmin):
    list_display = ("created_at", "hypervisor", "message", "actor")
    list_filter = ("hypervisor",)
    readonly_fields = [f.name for f in HypervisorEvent._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
