"""Where a desktop starts and which running desktops move: pure decisions over a snapshot.

Nothing here touches the database, libvirt or the clock. A selector turns the hypervisor
rows, their last stats sample and the desktops on them into `HostSnapshot`s and
`RunningDesktop`s; a service calls `place` or `plan_rebalance` and carries out the answer.
Keeping the decision pure is what lets the tests and `bench/bench_placement.py` run it over
ten thousand simulated desktops in seconds, and makes every decision reproducible from its
inputs.

Memory is looked at in two ways, on purpose:

- **Bookings** (`allocated_memory_mib + in_flight_memory_mib`, against
  `memory_mib * memory_overcommit`) decide whether a host *may* take a desktop. This is
  the hard capacity constraint; vCPUs are booked the same way against
  `cpus * cpu_overcommit`.
- **Use** (`memory_mib - free_memory_mib + in_flight_memory_mib`: what the host reported
  in its last sample, plus the starts it has not reported yet) decides which host
  *should* take it. Policies, `spread` and the rebalancer compare use as a *share* of
  capacity, so a 64 GiB host and a 512 GiB host at 50% count as equally loaded; ranking by
  free MiB instead would fill the big hosts first and leave the small ones idle (Isard's
  default balancer, `available_ram_percent`, ranks by share for the same reason).

Every decision is deterministic (ties go to the lowest host id) and `place` is O(hosts).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum


class HostMode(StrEnum):
    """What the admin wants of a host; mirrors `hypervisors.choices.HypervisorMode`.

    Redeclared rather than imported so this module stays free of Django; a selector
    converts with `HostMode(hypervisor.mode)`.
    """

    ENABLED = "enabled"
    MAINTENANCE = "maintenance"
    DISABLED = "disabled"


class Policy(StrEnum):
    """How to choose among the hosts that can take a desktop."""

    MOST_FREE_MEMORY = "most_free_memory"
    """Lowest memory use as a share of capacity: spreads desktops, keeps every host cool."""

    LEAST_CPU_LOAD = "least_cpu_load"
    """Lowest load per CPU, counting the vCPUs of starts still in flight."""

    PACK = "pack"
    """Highest memory use share that still fits: fills one host before the next, so idle
    hosts stay empty and can be powered down. Hosts with fewer capabilities the desktop
    does not use (tags, extra storage pools) are filled first, so plain desktops do not
    use up the GPU hosts that GPU desktops will need."""

    ROUND_ROBIN = "round_robin"
    """The next host by id after the one chosen last, wrapping around."""


class MoveKind(StrEnum):
    LIVE_MIGRATION = "live_migration"
    """Migrate the running guest now (both hosts reach its disk)."""

    AT_NEXT_START = "at_next_start"
    """Leave it running; start it on the target the next time it starts."""


class MoveReason(StrEnum):
    DRAIN = "drain"
    """Its host is in maintenance and must be emptied."""

    BALANCE = "balance"
    """Its host is among the most loaded; moving it narrows the spread."""


@dataclass(frozen=True, slots=True)
class HostSnapshot:
    """One hypervisor as the balancer sees it: capacity, last sample, bookings, rules.

    `allocated_*` are the sizes of the desktops running there as of the last stats
    sample; `in_flight_*` are the starts placed there since, charged until the next
    sample shows them (Isard charges them for 30 s). Without that charge a class of 30
    starting in the same second would all see the same free memory and pile onto one
    host. A selector may count a just-started desktop in both for a few seconds; that
    errs on the safe side.

    `cpu_load` is the load average per CPU from the last sample (1.0 = every CPU busy).
    """

    id: int
    name: str
    memory_mib: int
    cpus: int
    free_memory_mib: int
    cpu_load: float = 0.0
    allocated_memory_mib: int = 0
    allocated_vcpus: int = 0
    in_flight_memory_mib: int = 0
    in_flight_vcpus: int = 0
    memory_overcommit: float = 1.0
    cpu_overcommit: float = 4.0
    mode: HostMode = HostMode.ENABLED
    online: bool = True
    tags: frozenset[str] = frozenset()
    storage_pools: frozenset[int] = frozenset()

    @property
    def takes_new_desktops(self) -> bool:
        """Online and enabled: the hosts that receive desktops and count in the spread."""
        return self.online and self.mode == HostMode.ENABLED

    @property
    def memory_headroom_mib(self) -> int:
        """MiB that may still be booked here, overcommit included (negative if overbooked)."""
        limit = self.memory_mib * self.memory_overcommit
        return math.floor(limit - self.allocated_memory_mib - self.in_flight_memory_mib)

    @property
    def vcpu_headroom(self) -> int:
        """vCPUs that may still be booked here, overcommit included."""
        limit = self.cpus * self.cpu_overcommit
        return math.floor(limit - self.allocated_vcpus - self.in_flight_vcpus)

    @property
    def memory_used_mib(self) -> int:
        return self.memory_mib - self.free_memory_mib + self.in_flight_memory_mib

    @property
    def memory_use_share(self) -> float:
        """Memory in use as a share of physical memory; may pass 1.0 with overcommit."""
        if self.memory_mib <= 0:
            return math.inf
        return self.memory_used_mib / self.memory_mib

    @property
    def estimated_cpu_load(self) -> float:
        """The sampled load per CPU plus starts in flight, each vCPU counted as busy.

        A booting guest keeps its vCPUs busy, and the next sample has not seen it yet.
        """
        if self.cpus <= 0:
            return math.inf
        return self.cpu_load + self.in_flight_vcpus / self.cpus


@dataclass(frozen=True, slots=True)
class DesktopRequest:
    """What a desktop needs from a host to start."""

    memory_mib: int
    vcpus: int
    required_tags: frozenset[str] = frozenset()
    storage_pool: int | None = None
    forced_host: int | None = None
    favourite_host: int | None = None


@dataclass(frozen=True, slots=True)
class Placement:
    """The answer to "where does this desktop start?".

    `reason` always says why: which rule chose the host, or, when `host_id` is None, why
    each host was excluded, in a sentence fit to show the user who pressed Start.
    """

    host_id: int | None
    reason: str

    @property
    def placed(self) -> bool:
        return self.host_id is not None


@dataclass(frozen=True, slots=True)
class RunningDesktop:
    """A running desktop the rebalancer may move.

    `migratable` is False when the guest cannot be live-migrated (its disk is not on
    storage both hosts share, a passed-through device...); it can still be moved at its
    next start.
    """

    id: int
    host_id: int
    memory_mib: int
    vcpus: int
    required_tags: frozenset[str] = frozenset()
    storage_pool: int | None = None
    migratable: bool = True


@dataclass(frozen=True, slots=True)
class Move:
    """One step of a rebalancing plan."""

    desktop_id: int
    source_host_id: int
    target_host_id: int
    kind: MoveKind
    reason: MoveReason


class _Blocker(StrEnum):
    """Why a host cannot take a desktop, in the order the checks run (first one wins)."""

    OFFLINE = "offline"
    DISABLED = "disabled"
    MAINTENANCE = "maintenance"
    STORAGE = "storage"
    TAGS = "tags"
    MEMORY = "memory"
    VCPUS = "vcpus"


def _blocker(
    host: HostSnapshot,
    *,
    memory_mib: int,
    vcpus: int,
    required_tags: frozenset[str],
    storage_pool: int | None,
    allow_maintenance: bool = False,
) -> _Blocker | None:
    """The first hard constraint that stops `host` taking the desktop, or None if it fits.

    The decision and the reason text both come from this one function, so the message a
    user reads can never disagree with what the balancer did.
    """
    if not host.online:
        return _Blocker.OFFLINE
    if host.mode != HostMode.ENABLED:
        if host.mode != HostMode.MAINTENANCE:
            # Anything unknown counts as disabled: never place on a host we do not understand.
            return _Blocker.DISABLED
        if not allow_maintenance:
            return _Blocker.MAINTENANCE
    if storage_pool is not None and storage_pool not in host.storage_pools:
        return _Blocker.STORAGE
    if not required_tags <= host.tags:
        return _Blocker.TAGS
    booked_memory = host.allocated_memory_mib + host.in_flight_memory_mib + memory_mib
    if booked_memory > host.memory_mib * host.memory_overcommit:
        return _Blocker.MEMORY
    if host.allocated_vcpus + host.in_flight_vcpus + vcpus > host.cpus * host.cpu_overcommit:
        return _Blocker.VCPUS
    return None


def _request_blocker(
    host: HostSnapshot, request: DesktopRequest, *, allow_maintenance: bool = False
) -> _Blocker | None:
    return _blocker(
        host,
        memory_mib=request.memory_mib,
        vcpus=request.vcpus,
        required_tags=request.required_tags,
        storage_pool=request.storage_pool,
        allow_maintenance=allow_maintenance,
    )


def place(
    request: DesktopRequest,
    hosts: Sequence[HostSnapshot],
    policy: Policy,
    *,
    round_robin_cursor: int = 0,
) -> Placement:
    """Choose the host a desktop starts on, or say clearly why none can take it.

    A forced host overrides the policy and is the only candidate: if it cannot take the
    desktop the start fails rather than silently running elsewhere. It may be in
    maintenance (an admin testing a host before opening it again) but must be online,
    not disabled, and meet every other constraint. A favourite host is chosen whenever it
    fits; otherwise the policy picks. `round_robin_cursor` is the id of the host chosen
    last; round robin takes the next id after it.

    One pass over `hosts`; ties go to the lowest id so the same snapshot always gives the
    same answer.
    """
    if request.forced_host is not None:
        return _place_forced(request, hosts, request.forced_host)

    policy = Policy(policy)  # a plain string from a setting or a course row works too
    best: HostSnapshot | None = None
    best_key: tuple[float, float, int] = (math.inf, math.inf, 0)
    for host in hosts:
        if _request_blocker(host, request) is not None:
            continue
        if host.id == request.favourite_host:
            return Placement(host.id, f"placed on {host.name}, the favourite host")
        key = _policy_key(host, request, policy, round_robin_cursor)
        if best is None or key < best_key:
            best, best_key = host, key
    if best is None:
        return Placement(None, _no_host_reason(request, hosts))
    return Placement(best.id, f"placed on {best.name} by policy {policy.value}")


def _policy_key(
    host: HostSnapshot, request: DesktopRequest, policy: Policy, round_robin_cursor: int
) -> tuple[float, float, int]:
    """Smallest key wins; the id settles ties. Only called for hosts that fit."""
    if policy is Policy.MOST_FREE_MEMORY:
        return (host.memory_use_share, 0.0, host.id)
    if policy is Policy.LEAST_CPU_LOAD:
        return (host.estimated_cpu_load, 0.0, host.id)
    if policy is Policy.PACK:
        # The host fits, so it has every required tag and the pool: the rest is unused.
        unused_tags = len(host.tags) - len(request.required_tags)
        unused_pools = len(host.storage_pools) - (request.storage_pool is not None)
        return (unused_tags + unused_pools, -host.memory_use_share, host.id)
    # Round robin: hosts after the cursor first (0), then wrap around to the start (1).
    return (0.0 if host.id > round_robin_cursor else 1.0, 0.0, host.id)


def _place_forced(
    request: DesktopRequest, hosts: Sequence[HostSnapshot], host_id: int
) -> Placement:
    forced = next((host for host in hosts if host.id == host_id), None)
    if forced is None:
        return Placement(None, f"forced host {host_id} is not a known hypervisor")
    blocker = _request_blocker(forced, request, allow_maintenance=True)
    if blocker is None:
        return Placement(forced.id, f"placed on {forced.name}, the forced host")
    return Placement(
        None,
        f"forced host {forced.name} cannot take this desktop "
        f"({_describe_request(request)}): it {_singular_phrase(blocker, forced, request)}",
    )


def _describe_request(request: DesktopRequest) -> str:
    parts = [f"{request.memory_mib} MiB", _count(request.vcpus, "vCPU")]
    if request.storage_pool is not None:
        parts.append(f"pool {request.storage_pool}")
    if request.required_tags:
        parts.append(_tags_phrase(request.required_tags))
    return ", ".join(parts)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _tags_phrase(tags: frozenset[str]) -> str:
    word = "tag" if len(tags) == 1 else "tags"
    return f"{word} {', '.join(sorted(tags))}"


def _missing_tags(host: HostSnapshot, request: DesktopRequest) -> frozenset[str]:
    return request.required_tags - host.tags


def _singular_phrase(blocker: _Blocker, host: HostSnapshot, request: DesktopRequest) -> str:
    if blocker is _Blocker.OFFLINE:
        return "is offline"
    if blocker is _Blocker.DISABLED:
        return "is disabled"
    if blocker is _Blocker.MAINTENANCE:
        return "is in maintenance"
    if blocker is _Blocker.STORAGE:
        return f"cannot reach pool {request.storage_pool}"
    if blocker is _Blocker.TAGS:
        return f"lacks {_tags_phrase(_missing_tags(host, request))}"
    if blocker is _Blocker.MEMORY:
        return f"has only {max(host.memory_headroom_mib, 0)} MiB free"
    return f"has only {_count(max(host.vcpu_headroom, 0), 'vCPU')} free"


_PLURAL_PHRASES = {
    _Blocker.OFFLINE: "are offline",
    _Blocker.DISABLED: "are disabled",
    _Blocker.MAINTENANCE: "are in maintenance",
}
_NAMES_SHOWN = 3


def _no_host_reason(request: DesktopRequest, hosts: Sequence[HostSnapshot]) -> str:
    """ "no hypervisor with 4096 MiB and 2 vCPUs free in pool 3: host a is in maintenance; ..."

    Hosts are grouped by what stopped them, so the sentence stays short on a large fleet.
    Only called when the placement failed, so it may take its time building strings.
    """
    headline = f"no hypervisor with {request.memory_mib} MiB and "
    headline += f"{_count(request.vcpus, 'vCPU')} free"
    if request.storage_pool is not None:
        headline += f" in pool {request.storage_pool}"
    if request.required_tags:
        headline += f" with {_tags_phrase(request.required_tags)}"
    if not hosts:
        return f"{headline}: no hypervisors are known"

    groups: dict[tuple[_Blocker, str], list[HostSnapshot]] = {}
    for host in sorted(hosts, key=lambda host: host.id):
        blocker = _request_blocker(host, request)
        if blocker is None:  # pragma: no cover - only called when nothing fits
            continue
        detail = ""
        if blocker is _Blocker.TAGS:
            detail = _tags_phrase(_missing_tags(host, request))
        groups.setdefault((blocker, detail), []).append(host)

    order = list(_Blocker)
    clauses = []
    for (blocker, detail), members in sorted(
        groups.items(), key=lambda item: (order.index(item[0][0]), item[0][1])
    ):
        if len(members) == 1:
            host = members[0]
            clauses.append(f"host {host.name} {_singular_phrase(blocker, host, request)}")
            continue
        names = _names(members)
        if blocker in _PLURAL_PHRASES:
            phrase = _PLURAL_PHRASES[blocker]
        elif blocker is _Blocker.STORAGE:
            phrase = f"cannot reach pool {request.storage_pool}"
        elif blocker is _Blocker.TAGS:
            phrase = f"lack {detail}"
        elif blocker is _Blocker.MEMORY:
            most = max(max(host.memory_headroom_mib, 0) for host in members)
            phrase = f"have at most {most} MiB free"
        else:
            most = max(max(host.vcpu_headroom, 0) for host in members)
            phrase = f"have at most {_count(most, 'vCPU')} free"
        clauses.append(f"hosts {names} {phrase}")
    return f"{headline}: {'; '.join(clauses)}"


def _names(members: Sequence[HostSnapshot]) -> str:
    shown = ", ".join(host.name for host in members[:_NAMES_SHOWN])
    hidden = len(members) - _NAMES_SHOWN
    return f"{shown} and {hidden} more" if hidden > 0 else shown


class FleetState:
    """A working copy of a snapshot for placing many desktops in one go.

    Each placement charges the chosen host's in-flight memory and vCPUs, as the start
    service does until the host's next stats sample, so the next decision sees it: a
    class of 30 spreads under "most free memory" and fills host after host under "pack".
    The snapshots themselves stay immutable; only this object's list of them changes.
    """

    def __init__(self, hosts: Iterable[HostSnapshot], *, round_robin_cursor: int = 0) -> None:
        self._hosts = list(hosts)
        self._index = {host.id: position for position, host in enumerate(self._hosts)}
        self.round_robin_cursor = round_robin_cursor

    @property
    def hosts(self) -> Sequence[HostSnapshot]:
        return self._hosts

    def host(self, host_id: int) -> HostSnapshot:
        return self._hosts[self._index[host_id]]

    def place(self, request: DesktopRequest, policy: Policy) -> Placement:
        """Decide with `place`, then charge the chosen host and move the cursor to it."""
        placement = place(request, self._hosts, policy, round_robin_cursor=self.round_robin_cursor)
        if placement.host_id is not None:
            self.charge(placement.host_id, request)
            self.round_robin_cursor = placement.host_id
        return placement

    def charge(self, host_id: int, request: DesktopRequest) -> None:
        """Book a start on a host until its next sample: in-flight memory and vCPUs."""
        position = self._index[host_id]
        host = self._hosts[position]
        self._hosts[position] = replace(
            host,
            in_flight_memory_mib=host.in_flight_memory_mib + request.memory_mib,
            in_flight_vcpus=host.in_flight_vcpus + request.vcpus,
        )


def spread(hosts: Iterable[HostSnapshot]) -> float:
    """Max minus min memory use as a share of capacity, over online enabled hosts.

    Hosts in maintenance, disabled or offline are left out: they take no new desktops,
    so their load says nothing about how evenly the working fleet is used.
    """
    shares = [
        host.memory_use_share for host in hosts if host.takes_new_desktops and host.memory_mib > 0
    ]
    if not shares:
        return 0.0
    return max(shares) - min(shares)


def project_moves(
    hosts: Sequence[HostSnapshot], desktops: Sequence[RunningDesktop], moves: Iterable[Move]
) -> tuple[HostSnapshot, ...]:
    """The snapshot as it would be once every move is done (moves at next start included).

    Bookings and sampled free memory move with the desktop, the way the next stats sample
    would show them. For tests, benchmarks and a plan preview; nothing is applied.
    """
    by_desktop = {desktop.id: desktop for desktop in desktops}
    projected = {host.id: host for host in hosts}
    for move in moves:
        desktop = by_desktop[move.desktop_id]
        source = projected[move.source_host_id]
        target = projected[move.target_host_id]
        projected[source.id] = replace(
            source,
            allocated_memory_mib=source.allocated_memory_mib - desktop.memory_mib,
            allocated_vcpus=source.allocated_vcpus - desktop.vcpus,
            free_memory_mib=source.free_memory_mib + desktop.memory_mib,
        )
        projected[target.id] = replace(
            target,
            allocated_memory_mib=target.allocated_memory_mib + desktop.memory_mib,
            allocated_vcpus=target.allocated_vcpus + desktop.vcpus,
            free_memory_mib=target.free_memory_mib - desktop.memory_mib,
        )
    return tuple(projected[host.id] for host in hosts)


# Shares are float ratios: the tolerance keeps a move that lands exactly on a bound (the
# current highest or lowest use) from being refused because of rounding.
_EPSILON = 1e-12


def plan_rebalance(
    hosts: Sequence[HostSnapshot],
    desktops: Sequence[RunningDesktop],
    *,
    max_moves: int,
    threshold: float,
) -> list[Move]:
    """Which running desktops to move where, to drain maintenance hosts and narrow the spread.

    Drain first: every desktop on a host in maintenance goes, largest first, to the
    online enabled host that will be least used after taking it. Those moves count
    first against `max_moves`. A desktop that fits nowhere stays; the drain service
    decides whether to stop it.

    Then balance: while `spread` is at or above `threshold`, move a desktop from the most
    used host towards the least used, choosing the one whose size comes closest to
    evening the pair out (fewest migrations for the most effect). A move is made only if
    it keeps both hosts within the current lowest and highest use and narrows the gap
    between them, so no balancing move ever widens the spread; when the most used host
    has nothing that can go, desktops are pulled into the least used host from the others.

    Every move respects capacity with overcommit, tags and storage reachability, and each
    desktop moves at most once per plan (no ping-pong). A desktop that cannot be live
    migrated, or whose host is offline, is returned as a move at its next start; the plan
    counts it as gone so it does not pick a second one for the same job. The plan is a
    pure function of its inputs; applying it is the service's business.
    """
    if max_moves <= 0:
        return []
    planner = _Planner(hosts, desktops)
    planner.drain(max_moves)
    planner.balance(max_moves, threshold)
    return planner.moves


class _Planner:
    """Mutable working state of `plan_rebalance`, kept in flat lists for speed.

    Rebuilding frozen snapshots on every move would cost more than the decision itself.
    """

    def __init__(self, hosts: Sequence[HostSnapshot], desktops: Sequence[RunningDesktop]) -> None:
        self.hosts = hosts
        self.position = {host.id: position for position, host in enumerate(hosts)}
        self.used = [host.memory_used_mib for host in hosts]
        self.capacity = [host.memory_mib for host in hosts]
        self.booked_memory = [
            host.allocated_memory_mib + host.in_flight_memory_mib for host in hosts
        ]
        self.booked_vcpus = [host.allocated_vcpus + host.in_flight_vcpus for host in hosts]
        self.memory_limit = [host.memory_mib * host.memory_overcommit for host in hosts]
        self.vcpu_limit = [host.cpus * host.cpu_overcommit for host in hosts]
        self.receives = [host.takes_new_desktops and host.memory_mib > 0 for host in hosts]
        self.participants = [position for position, yes in enumerate(self.receives) if yes]
        self.desktops = [desktop for desktop in desktops if desktop.host_id in self.position]
        # Per host, the desktops it may give away, sorted by size; live-migratable ones
        # apart, because they are tried first.
        self.sizes: list[tuple[list[int], list[int]]] = [([], []) for _ in hosts]
        self.candidates: list[tuple[list[RunningDesktop], list[RunningDesktop]]] = [
            ([], []) for _ in hosts
        ]
        for desktop in sorted(self.desktops, key=lambda desktop: (desktop.memory_mib, desktop.id)):
            position = self.position[desktop.host_id]
            if not self.receives[position]:
                continue
            kind = 0 if desktop.migratable else 1
            self.sizes[position][kind].append(desktop.memory_mib)
            self.candidates[position][kind].append(desktop)
        self.moves: list[Move] = []

    def share(self, position: int) -> float:
        return self.used[position] / self.capacity[position]

    def fits(self, desktop: RunningDesktop, position: int) -> bool:
        if not self.receives[position]:
            return False
        host = self.hosts[position]
        if desktop.storage_pool is not None and desktop.storage_pool not in host.storage_pools:
            return False
        if not desktop.required_tags <= host.tags:
            return False
        if self.booked_memory[position] + desktop.memory_mib > self.memory_limit[position]:
            return False
        return self.booked_vcpus[position] + desktop.vcpus <= self.vcpu_limit[position]

    def move(self, desktop: RunningDesktop, source: int, target: int, reason: MoveReason) -> None:
        self.used[source] -= desktop.memory_mib
        self.booked_memory[source] -= desktop.memory_mib
        self.booked_vcpus[source] -= desktop.vcpus
        self.used[target] += desktop.memory_mib
        self.booked_memory[target] += desktop.memory_mib
        self.booked_vcpus[target] += desktop.vcpus
        live = desktop.migratable and self.hosts[source].online
        self.moves.append(
            Move(
                desktop_id=desktop.id,
                source_host_id=self.hosts[source].id,
                target_host_id=self.hosts[target].id,
                kind=MoveKind.LIVE_MIGRATION if live else MoveKind.AT_NEXT_START,
                reason=reason,
            )
        )

    def drain(self, max_moves: int) -> None:
        leaving = [
            desktop
            for desktop in self.desktops
            if self.hosts[self.position[desktop.host_id]].mode == HostMode.MAINTENANCE
        ]
        leaving.sort(key=lambda desktop: (-desktop.memory_mib, desktop.id))
        for desktop in leaving:
            if len(self.moves) >= max_moves:
                return
            best: int | None = None
            best_key = (math.inf, 0)
            for position in self.participants:
                if not self.fits(desktop, position):
                    continue
                after = (self.used[position] + desktop.memory_mib) / self.capacity[position]
                key = (after, self.hosts[position].id)
                if key < best_key:
                    best, best_key = position, key
            if best is not None:
                self.move(desktop, self.position[desktop.host_id], best, MoveReason.DRAIN)

    def balance(self, max_moves: int, threshold: float) -> None:
        if len(self.participants) < 2:
            return
        while len(self.moves) < max_moves:
            ranked = sorted(
                self.participants,
                key=lambda position: (self.share(position), self.hosts[position].id),
            )
            lowest_share, highest_share = self.share(ranked[0]), self.share(ranked[-1])
            if highest_share - lowest_share < threshold:
                return
            # The most used host (lowest id among equals) gives to the least used first.
            top = max(
                self.participants,
                key=lambda position: (self.share(position), -self.hosts[position].id),
            )
            bottom = ranked[0]
            found = self._from_source(top, ranked, lowest_share, highest_share)
            if found is None:
                found = self._into_target(bottom, ranked, lowest_share, highest_share)
            if found is None:
                return
            desktop, source, target = found
            self.candidates[source][0 if desktop.migratable else 1].remove(desktop)
            sizes = self.sizes[source][0 if desktop.migratable else 1]
            del sizes[bisect.bisect_left(sizes, desktop.memory_mib)]
            self.move(desktop, source, target, MoveReason.BALANCE)

    def _from_source(
        self, source: int, ranked: list[int], lowest: float, highest: float
    ) -> tuple[RunningDesktop, int, int] | None:
        for target in ranked:
            if self.share(target) >= self.share(source):
                return None
            desktop = self._best_desktop(source, target, lowest, highest)
            if desktop is not None:
                return desktop, source, target
        return None

    def _into_target(
        self, target: int, ranked: list[int], lowest: float, highest: float
    ) -> tuple[RunningDesktop, int, int] | None:
        for source in reversed(ranked):
            if self.share(source) <= self.share(target):
                return None
            desktop = self._best_desktop(source, target, lowest, highest)
            if desktop is not None:
                return desktop, source, target
        return None

    def _best_desktop(
        self, source: int, target: int, lowest: float, highest: float
    ) -> RunningDesktop | None:
        """The desktop on `source` closest to the size that evens out the pair.

        Moving m MiB takes the source's share down by m/C_s and the target's up by m/C_t;
        they meet at m* = gap / (1/C_s + 1/C_t). Any m strictly between 0 and 2·m*
        narrows the pair's gap; the search walks outwards from m* and stops there.
        Live-migratable desktops are preferred: they even the load now, not at next start.
        """
        source_share, target_share = self.share(source), self.share(target)
        gap = source_share - target_share
        ideal = gap / (1 / self.capacity[source] + 1 / self.capacity[target])
        for kind in (0, 1):
            sizes = self.sizes[source][kind]
            candidates = self.candidates[source][kind]
            right = bisect.bisect_left(sizes, ideal)
            left = right - 1
            while left >= 0 or right < len(sizes):
                if right >= len(sizes) or (
                    left >= 0 and ideal - sizes[left] <= sizes[right] - ideal
                ):
                    index, left = left, left - 1
                else:
                    index, right = right, right + 1
                size = sizes[index]
                if abs(size - ideal) >= ideal:
                    # Candidates come closest first, so all the rest are out of range too.
                    break
                desktop = candidates[index]
                if self._acceptable(desktop, source, target, gap, lowest, highest):
                    return desktop
        return None

    def _acceptable(
        self,
        desktop: RunningDesktop,
        source: int,
        target: int,
        gap: float,
        lowest: float,
        highest: float,
    ) -> bool:
        if not self.fits(desktop, target):
            return False
        source_after = (self.used[source] - desktop.memory_mib) / self.capacity[source]
        target_after = (self.used[target] + desktop.memory_mib) / self.capacity[target]
        return (
            target_after <= highest + _EPSILON
            and source_after >= lowest - _EPSILON
            and abs(source_after - target_after) < gap - _EPSILON
        )
