"""The fleet as the balancer sees it: hosts, what is booked on them, starts in flight.

Every host's rows, the desktops booked on it and the starts still in flight become
`placement.HostSnapshot`s, so the decision itself stays a pure function
(`hypervisors.placement`)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Q, Sum
from django.utils import timezone

from desktops.choices import ACTIVE_STATUSES, DesktopStatus
from desktops.models import Desktop
from hypervisors.choices import (
    HypervisorState,
    MoveKind,
    MoveReason,
    MoveStatus,
    PlacementPolicy,
)
from hypervisors.fleet import fleet_settings
from hypervisors.models import (
    DesktopMove,
    Hypervisor,
    PlacementCharge,
    PlacementRule,
    StoragePool,
)
from hypervisors.placement import HostMode, HostSnapshot, RunningDesktop
from hypervisors.selectors import live_charges

#: Statuses whose desktops hold memory on their host: the guest may be running there.
#: UNKNOWN counts too: a host that comes back may still run them.
BOOKED_STATUSES = frozenset(ACTIVE_STATUSES | {DesktopStatus.UNKNOWN})


@dataclass(frozen=True)
class FleetSnapshot:
    """Every host as the balancer sees it, with the rows it was built from."""

    hosts: tuple[HostSnapshot, ...]
    hypervisors: dict[int, Hypervisor]
    #: The host chosen by the last start: round robin continues after it.
    round_robin_cursor: int
    #: Pool names by id, so a refusal can name the pool a person knows.
    pool_names: dict[int, str]


def _takes_part(hypervisor: Hypervisor) -> tuple[HostMode, bool]:
    """The host's mode and whether it is online, as the balancer understands them."""
    online = hypervisor.state == HypervisorState.ONLINE and hypervisor.unreachable_since is None
    try:
        mode = HostMode(hypervisor.mode)
    except ValueError:
        mode = HostMode.DISABLED
    if not hypervisor.accelerator:
        # No guest has booted there yet (the accelerator probe did not run or failed).
        mode = HostMode.DISABLED
    return mode, online


def fleet_snapshot(
    *, now: datetime | None = None, exclude_desktop_ids: Collection[int] = ()
) -> FleetSnapshot:
    """The whole fleet for one decision: a handful of queries, whatever the number of desktops.

    Memory and vCPUs are booked by every desktop in a booked status on a host, at the size
    of its hardware profile. A desktop with a live charge counts where the charge is (it
    is being started there, and its row may still name its previous host), once, as in
    flight. `exclude_desktop_ids` are being placed now and count nowhere.
    """
    now = now or timezone.now()
    hypervisors = {
        hypervisor.pk: hypervisor
        for hypervisor in Hypervisor.objects.prefetch_related("storage_pools").order_by("pk")
    }
    pool_names = dict(StoragePool.objects.values_list("pk", "name"))
    every_pool = frozenset(pool_names)

    in_flight_memory: dict[int, int] = defaultdict(int)
    in_flight_vcpus: dict[int, int] = defaultdict(int)
    charged: set[int] = set()
    for charge in live_charges(
        hypervisors=hypervisors.values(), now=now, exclude_desktop_ids=exclude_desktop_ids
    ):
        in_flight_memory[charge.hypervisor_id] += charge.memory_mib
        in_flight_vcpus[charge.hypervisor_id] += charge.vcpus
        if charge.desktop_id is not None:
            charged.add(charge.desktop_id)

    # Summed by the database (one row per host, however many desktops run), then the
    # desktops counted elsewhere are taken off again: O(hosts + charges) rows.
    allocated_memory: dict[int, int] = defaultdict(int)
    allocated_vcpus: dict[int, int] = defaultdict(int)
    booked = Desktop.objects.filter(status__in=BOOKED_STATUSES, hypervisor__isnull=False)
    totals = booked.values("hypervisor_id").annotate(
        memory=Sum("hardware__memory_mib"), vcpus=Sum("hardware__vcpus")
    )
    for row in totals:
        allocated_memory[row["hypervisor_id"]] += row["memory"] or 0
        allocated_vcpus[row["hypervisor_id"]] += row["vcpus"] or 0
    counted_elsewhere = charged | set(exclude_desktop_ids)
    if counted_elsewhere:
        for hypervisor_id, memory_mib, vcpus in booked.filter(pk__in=counted_elsewhere).values_list(
            "hypervisor_id", "hardware__memory_mib", "hardware__vcpus"
        ):
            allocated_memory[hypervisor_id] -= memory_mib
            allocated_vcpus[hypervisor_id] -= vcpus

    hosts = []
    for hypervisor in hypervisors.values():
        mode, online = _takes_part(hypervisor)
        pools = frozenset(pool.pk for pool in hypervisor.storage_pools.all()) or every_pool
        hosts.append(
            HostSnapshot(
                id=hypervisor.pk,
                name=hypervisor.name,
                memory_mib=hypervisor.memory_mib,
                cpus=hypervisor.cpus,
                free_memory_mib=hypervisor.free_memory_mib,
                cpu_load=hypervisor.cpu_load,
                allocated_memory_mib=allocated_memory[hypervisor.pk],
                allocated_vcpus=allocated_vcpus[hypervisor.pk],
                in_flight_memory_mib=in_flight_memory[hypervisor.pk],
                in_flight_vcpus=in_flight_vcpus[hypervisor.pk],
                memory_overcommit=hypervisor.memory_overcommit,
                cpu_overcommit=hypervisor.cpu_overcommit,
                mode=mode,
                online=online,
                tags=frozenset(str(tag) for tag in hypervisor.tags or ()),
                storage_pools=pools,
            )
        )
    last = PlacementCharge.objects.order_by("-created_at", "-pk").values_list(
        "hypervisor_id", flat=True
    )
    return FleetSnapshot(
        hosts=tuple(hosts),
        hypervisors=hypervisors,
        round_robin_cursor=last.first() or 0,
        pool_names=pool_names,
    )


@dataclass(frozen=True)
class EffectiveRule:
    """A desktop's placement wishes once its own rule, its course's and the defaults merge."""

    policy: PlacementPolicy
    forced_hypervisor_id: int | None = None
    favourite_hypervisor_id: int | None = None
    required_tags: frozenset[str] = frozenset()


class RuleBook:
    """The placement rules of some desktops and courses, loaded in one query."""

    def __init__(
        self, *, desktop_ids: Collection[int] = (), course_ids: Collection[int] = ()
    ) -> None:
        self.by_desktop: dict[int, PlacementRule] = {}
        self.by_course: dict[int, PlacementRule] = {}
        wanted_desktops = [pk for pk in desktop_ids if pk is not None]
        wanted_courses = [pk for pk in course_ids if pk is not None]
        if not wanted_desktops and not wanted_courses:
            return
        rules = PlacementRule.objects.filter(
            Q(desktop_id__in=wanted_desktops) | Q(course_id__in=wanted_courses)
        )
        for rule in rules:
            if rule.desktop_id is not None:
                self.by_desktop[rule.desktop_id] = rule
            if rule.course_id is not None:
                self.by_course[rule.course_id] = rule

    def effective(self, *, desktop_id: int | None, course_id: int | None) -> EffectiveRule:
        default = fleet_settings().placement_policy
        own = self.by_desktop.get(desktop_id) if desktop_id is not None else None
        course = self.by_course.get(course_id) if course_id is not None else None
        layers = [rule for rule in (own, course) if rule is not None]  # most specific first

        def first(attribute: str) -> int | None:
            for rule in layers:
                value = getattr(rule, attribute)
                if value:
                    return int(value)
            return None

        policy = next((rule.policy for rule in layers if rule.policy), default)
        return EffectiveRule(
            policy=PlacementPolicy(policy),
            forced_hypervisor_id=first("forced_hypervisor_id"),
            favourite_hypervisor_id=first("favourite_hypervisor_id"),
            required_tags=frozenset(str(tag) for rule in layers for tag in rule.required_tags),
        )


def pending_next_start_targets(*, desktop_ids: Collection[int]) -> dict[int, int]:
    """The host each desktop was told to start on next by the rebalancer or a drain."""
    rows = (
        DesktopMove.objects.filter(
            desktop_id__in=desktop_ids,
            kind=MoveKind.AT_NEXT_START,
            status=MoveStatus.PENDING,
            target__isnull=False,
        )
        .order_by("created_at", "pk")
        .values_list("desktop_id", "target_id")
    )
    return {desktop_id: target_id for desktop_id, target_id in rows if target_id is not None}


def running_desktops(*, hypervisor_ids: Collection[int] | None = None) -> list[RunningDesktop]:
    """Started desktops with their size, rules and whether their disk allows live migration.

    A desktop can be live-migrated only when its disk is in a pool marked shared (every
    host reaching it sees the same file at the same path).
    """
    queryset = Desktop.objects.filter(status=DesktopStatus.STARTED, hypervisor__isnull=False)
    if hypervisor_ids is not None:
        queryset = queryset.filter(hypervisor_id__in=hypervisor_ids)
    rows = list(
        queryset.values_list(
            "pk",
            "hypervisor_id",
            "course_id",
            "hardware__memory_mib",
            "hardware__vcpus",
            "disk__pool_id",
            "disk__pool__shared",
        )
    )
    rules = RuleBook(
        desktop_ids=[row[0] for row in rows], course_ids={row[2] for row in rows if row[2]}
    )
    desktops = []
    for pk, hypervisor_id, course_id, memory_mib, vcpus, pool_id, shared in rows:
        rule = rules.effective(desktop_id=pk, course_id=course_id)
        desktops.append(
            RunningDesktop(
                id=pk,
                host_id=hypervisor_id,
                memory_mib=memory_mib,
                vcpus=vcpus,
                required_tags=rule.required_tags,
                storage_pool=pool_id,
                migratable=bool(shared),
            )
        )
    return desktops


@dataclass(frozen=True)
class DrainProgress:
    total: int
    remaining: int
    migrated: int
    stopped: int
    failed: int
    finished: bool

    def __str__(self) -> str:
        state = "finished" if self.finished else f"{self.remaining} of {self.total} left"
        return (
            f"{state}: {self.migrated} migrated, {self.stopped} shut down, "
            f"{self.failed} failed moves"
        )


def booked_desktops_on(hypervisor: Hypervisor) -> int:
    return Desktop.objects.filter(hypervisor=hypervisor, status__in=BOOKED_STATUSES).count()


def drain_progress(hypervisor: Hypervisor) -> DrainProgress | None:
    """How far the host's drain has come; None if it was never drained."""
    if hypervisor.drain_started_at is None:
        return None
    moves = DesktopMove.objects.filter(
        source=hypervisor, reason=MoveReason.DRAIN, created_at__gte=hypervisor.drain_started_at
    )
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for kind, status in moves.values_list("kind", "status"):
        counts[(kind, status)] += 1
    return DrainProgress(
        total=hypervisor.drain_total,
        remaining=booked_desktops_on(hypervisor),
        migrated=counts[(MoveKind.LIVE_MIGRATION, MoveStatus.DONE)],
        stopped=counts[(MoveKind.STOP, MoveStatus.DONE)],
        failed=sum(
            count for (_kind, status), count in counts.items() if status == MoveStatus.FAILED
        ),
        finished=hypervisor.drain_finished_at is not None,
    )


def drain_waiting(hypervisor: Hypervisor) -> bool:
    """Whether desktops on the host are still on their way out (shutting down, starting)."""
    return Desktop.objects.filter(
        hypervisor=hypervisor,
        status__in=[DesktopStatus.SHUTTING_DOWN, DesktopStatus.STOPPING, DesktopStatus.STARTING],
    ).exists()


def desktop_live_migration_target(
    *, desktop_id: int, now: datetime | None = None
) -> Hypervisor | None:
    """The host a live migration of the desktop under way now goes to, or None.

    A move left "running" by a worker that died counts only until the migration timeout
    (plus a minute) has passed, so nothing waits on it for ever.
    """
    now = now or timezone.now()
    since = now - timedelta(seconds=fleet_settings().migration_timeout_seconds + 60)
    move = (
        DesktopMove.objects.filter(
            desktop_id=desktop_id,
            kind=MoveKind.LIVE_MIGRATION,
            status=MoveStatus.RUNNING,
            created_at__gte=since,
        )
        .select_related("target")
        .order_by("-created_at")
        .first()
    )
    return move.target if move is not None else None
