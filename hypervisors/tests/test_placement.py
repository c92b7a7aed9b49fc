"""Placement and rebalancing decisions on synthetic fleets: no database, no libvirt."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from hypervisors.placement import (
    DesktopRequest,
    FleetState,
    HostMode,
    HostSnapshot,
    Move,
    MoveKind,
    MoveReason,
    Policy,
    RunningDesktop,
    place,
    plan_rebalance,
    project_moves,
    spread,
)

GIB = 1024


def make_host(
    host_id: int, *, memory_gib: int = 64, cpus: int = 16, used_mib: int = 0, **changes: Any
) -> HostSnapshot:
    """An online enabled host whose last sample saw `used_mib` booked and in use."""
    changes.setdefault("name", f"hv{host_id}")
    memory_mib = memory_gib * GIB
    return HostSnapshot(
        id=host_id,
        memory_mib=memory_mib,
        cpus=cpus,
        free_memory_mib=max(memory_mib - used_mib, 0),
        allocated_memory_mib=used_mib,
        **changes,
    )


def make_request(memory_mib: int = 2 * GIB, vcpus: int = 2, **changes: Any) -> DesktopRequest:
    return DesktopRequest(memory_mib=memory_mib, vcpus=vcpus, **changes)


def fits_by_hand(host: HostSnapshot, request: DesktopRequest, *, forced: bool = False) -> bool:
    """The hard constraints restated independently, as the oracle for the random tests."""
    allowed_modes = {"enabled", "maintenance"} if forced else {"enabled"}
    return (
        host.online
        and host.mode in allowed_modes
        and (request.storage_pool is None or request.storage_pool in host.storage_pools)
        and request.required_tags.issubset(host.tags)
        and host.allocated_memory_mib + host.in_flight_memory_mib + request.memory_mib
        <= host.memory_mib * host.memory_overcommit
        and host.allocated_vcpus + host.in_flight_vcpus + request.vcpus
        <= host.cpus * host.cpu_overcommit
    )


def within_capacity(host: HostSnapshot) -> bool:
    return (
        host.allocated_memory_mib + host.in_flight_memory_mib
        <= host.memory_mib * host.memory_overcommit
        and host.allocated_vcpus + host.in_flight_vcpus <= host.cpus * host.cpu_overcommit
    )


# Policies on small fleets


def test_most_free_memory_picks_the_host_with_the_lowest_use_share() -> None:
    hosts = [
        make_host(1, used_mib=40 * GIB),
        make_host(2, used_mib=10 * GIB),
        make_host(3, used_mib=20 * GIB),
    ]

    placement = place(make_request(), hosts, Policy.MOST_FREE_MEMORY)

    assert placement.host_id == 2
    assert placement.reason == "placed on hv2 by policy most_free_memory"


def test_most_free_memory_compares_shares_so_small_hosts_are_not_starved() -> None:
    big_half_used = make_host(1, memory_gib=512, used_mib=300 * GIB)  # 212 GiB free, 59% used
    small_quarter_used = make_host(2, memory_gib=64, used_mib=16 * GIB)  # 48 GiB free, 25% used

    placement = place(make_request(), [big_half_used, small_quarter_used], Policy.MOST_FREE_MEMORY)

    assert placement.host_id == 2


def test_least_cpu_load_picks_the_host_with_the_lowest_load_per_cpu() -> None:
    hosts = [
        make_host(1, cpu_load=0.5),
        make_host(2, cpu_load=0.2),
        make_host(3, cpu_load=0.8),
    ]

    assert place(make_request(), hosts, Policy.LEAST_CPU_LOAD).host_id == 2


def test_least_cpu_load_counts_the_vcpus_of_starts_in_flight() -> None:
    quiet_but_booting = make_host(1, cpus=4, cpu_load=0.1, in_flight_vcpus=4)  # 1.1 estimated
    busier = make_host(2, cpus=4, cpu_load=0.6)

    assert place(make_request(), [quiet_but_booting, busier], Policy.LEAST_CPU_LOAD).host_id == 2


def test_pack_picks_the_fullest_host_that_still_fits() -> None:
    hosts = [
        make_host(1, memory_gib=16, used_mib=15 * GIB),  # fullest, but 2 GiB does not fit
        make_host(2, memory_gib=16, used_mib=10 * GIB),
        make_host(3, memory_gib=16, used_mib=2 * GIB),
        make_host(4, memory_gib=16),
    ]

    assert place(make_request(), hosts, Policy.PACK).host_id == 2


def test_pack_fills_one_host_before_the_next() -> None:
    state = FleetState([make_host(host_id, memory_gib=16) for host_id in (1, 2, 3)])

    chosen = [state.place(make_request(), Policy.PACK).host_id for _ in range(20)]

    assert chosen == [1] * 8 + [2] * 8 + [3] * 4


def test_pack_keeps_hosts_with_extra_capabilities_for_desktops_that_need_them() -> None:
    gpu_host_in_use = make_host(1, used_mib=32 * GIB, tags=frozenset({"gpu"}))
    plain_empty_host = make_host(2)
    hosts = [gpu_host_in_use, plain_empty_host]

    assert place(make_request(), hosts, Policy.PACK).host_id == 2
    assert place(make_request(required_tags=frozenset({"gpu"})), hosts, Policy.PACK).host_id == 1


def test_round_robin_cycles_through_hosts_in_id_order() -> None:
    state = FleetState([make_host(host_id) for host_id in (3, 1, 2)])

    chosen = [state.place(make_request(), Policy.ROUND_ROBIN).host_id for _ in range(7)]

    assert chosen == [1, 2, 3, 1, 2, 3, 1]


def test_round_robin_takes_the_next_id_after_the_cursor_and_wraps() -> None:
    hosts = [make_host(host_id) for host_id in (10, 20, 30)]

    assert place(make_request(), hosts, Policy.ROUND_ROBIN, round_robin_cursor=10).host_id == 20
    assert place(make_request(), hosts, Policy.ROUND_ROBIN, round_robin_cursor=25).host_id == 30
    assert place(make_request(), hosts, Policy.ROUND_ROBIN, round_robin_cursor=30).host_id == 10


def test_round_robin_skips_hosts_that_cannot_take_the_desktop() -> None:
    hosts = [make_host(1), make_host(2, mode=HostMode.MAINTENANCE), make_host(3)]
    state = FleetState(hosts)

    chosen = [state.place(make_request(), Policy.ROUND_ROBIN).host_id for _ in range(4)]

    assert chosen == [1, 3, 1, 3]


@pytest.mark.parametrize("policy", list(Policy))
def test_ties_go_to_the_lowest_host_id(policy: Policy) -> None:
    hosts = [make_host(host_id, used_mib=8 * GIB, cpu_load=0.3) for host_id in (7, 2, 5)]

    assert place(make_request(), hosts, policy).host_id == 2


def test_a_policy_given_as_a_plain_string_is_accepted() -> None:
    hosts = [make_host(1, used_mib=8 * GIB), make_host(2)]

    assert place(make_request(), hosts, "most_free_memory").host_id == 2  # type: ignore[arg-type]


# Hard constraints and their reasons


@pytest.mark.parametrize(
    ("host", "request_changes", "explanation"),
    [
        (make_host(1, name="a", online=False), {}, "host a is offline"),
        (make_host(1, name="a", mode=HostMode.DISABLED), {}, "host a is disabled"),
        (make_host(1, name="a", mode=HostMode.MAINTENANCE), {}, "host a is in maintenance"),
        (
            make_host(1, name="a", storage_pools=frozenset({1})),
            {"storage_pool": 3},
            "host a cannot reach pool 3",
        ),
        (
            make_host(1, name="a", tags=frozenset({"ssd"})),
            {"required_tags": frozenset({"gpu", "ssd"})},
            "host a lacks tag gpu",
        ),
        (
            make_host(1, name="a", memory_gib=16, used_mib=14 * GIB),
            {},
            "host a has only 2048 MiB free",
        ),
        (
            make_host(1, name="a", cpus=2, cpu_overcommit=2.0, allocated_vcpus=2),
            {"vcpus": 3},
            "host a has only 2 vCPUs free",
        ),
    ],
    ids=["offline", "disabled", "maintenance", "storage", "tags", "memory", "vcpus"],
)
def test_a_host_that_breaks_a_hard_constraint_is_excluded_with_its_reason(
    host: HostSnapshot, request_changes: dict[str, Any], explanation: str
) -> None:
    request = make_request(memory_mib=4096, **request_changes)

    placement = place(request, [host], Policy.MOST_FREE_MEMORY)

    assert placement.host_id is None
    assert not placement.placed
    assert placement.reason.endswith(f": {explanation}")


def test_reason_headline_says_what_was_needed() -> None:
    request = make_request(memory_mib=4096, vcpus=1, storage_pool=3)

    placement = place(request, [make_host(1, name="a")], Policy.PACK)

    assert placement.reason == (
        "no hypervisor with 4096 MiB and 1 vCPU free in pool 3: host a cannot reach pool 3"
    )


def test_reason_groups_hosts_by_cause_and_shortens_long_lists() -> None:
    pools = frozenset({3})
    hosts = [
        make_host(1, name="a", mode=HostMode.MAINTENANCE, storage_pools=pools),
        make_host(2, name="b", storage_pools=pools),
        make_host(3, name="c", storage_pools=pools),
        *(
            make_host(
                host_id,
                name=name,
                memory_gib=8,
                used_mib=(host_id - 2) * GIB,
                storage_pools=pools,
                tags=frozenset({"gpu"}),
            )
            for host_id, name in zip(range(4, 9), "defgh", strict=True)
        ),
        make_host(9, name="i", tags=frozenset({"gpu"})),
    ]
    request = make_request(memory_mib=8 * GIB, storage_pool=3, required_tags=frozenset({"gpu"}))

    placement = place(request, hosts, Policy.MOST_FREE_MEMORY)

    assert placement.reason == (
        "no hypervisor with 8192 MiB and 2 vCPUs free in pool 3 with tag gpu: "
        "host a is in maintenance; host i cannot reach pool 3; hosts b, c lack tag gpu; "
        "hosts d, e, f and 2 more have at most 6144 MiB free"
    )


def test_an_empty_fleet_fails_with_a_reason() -> None:
    placement = place(make_request(memory_mib=4096), [], Policy.MOST_FREE_MEMORY)

    assert (
        placement.reason == "no hypervisor with 4096 MiB and 2 vCPUs free: no hypervisors are known"
    )


def test_memory_overcommit_lets_bookings_pass_physical_memory_up_to_the_ratio() -> None:
    host = make_host(1, memory_gib=16, used_mib=20 * GIB, memory_overcommit=1.5)

    assert place(make_request(memory_mib=4 * GIB), [host], Policy.PACK).host_id == 1
    refused = place(make_request(memory_mib=5 * GIB), [host], Policy.PACK)
    assert refused.host_id is None
    assert refused.reason.endswith("host hv1 has only 4096 MiB free")


def test_cpu_overcommit_lets_vcpus_pass_physical_cpus_up_to_the_ratio() -> None:
    host = make_host(1, cpus=4, cpu_overcommit=2.0, allocated_vcpus=6)

    assert place(make_request(vcpus=2), [host], Policy.PACK).host_id == 1
    assert place(make_request(vcpus=3), [host], Policy.PACK).host_id is None


def test_memory_of_starts_in_flight_counts_against_capacity() -> None:
    host = make_host(1, memory_gib=16, used_mib=8 * GIB, in_flight_memory_mib=6 * GIB)

    placement = place(make_request(memory_mib=4 * GIB), [host], Policy.MOST_FREE_MEMORY)

    assert placement.host_id is None
    assert placement.reason.endswith("host hv1 has only 2048 MiB free")


# Forced and favourite hosts


def test_forced_host_overrides_the_policy() -> None:
    hosts = [make_host(1), make_host(2, used_mib=60 * GIB)]

    placement = place(make_request(forced_host=2), hosts, Policy.MOST_FREE_MEMORY)

    assert placement.host_id == 2
    assert placement.reason == "placed on hv2, the forced host"


def test_forced_host_may_be_in_maintenance_so_an_admin_can_test_it() -> None:
    hosts = [make_host(1), make_host(2, mode=HostMode.MAINTENANCE)]

    assert place(make_request(forced_host=2), hosts, Policy.MOST_FREE_MEMORY).host_id == 2


@pytest.mark.parametrize(
    ("changes", "explanation"),
    [({"online": False}, "is offline"), ({"mode": HostMode.DISABLED}, "is disabled")],
)
def test_forced_host_that_is_offline_or_disabled_fails_with_its_reason(
    changes: dict[str, Any], explanation: str
) -> None:
    hosts = [make_host(1), make_host(2, name="b", **changes)]

    placement = place(make_request(forced_host=2), hosts, Policy.MOST_FREE_MEMORY)

    assert placement.host_id is None
    assert placement.reason == (
        f"forced host b cannot take this desktop (2048 MiB, 2 vCPUs): it {explanation}"
    )


def test_forced_host_without_room_fails_rather_than_starting_elsewhere() -> None:
    hosts = [make_host(1), make_host(2, name="b", memory_gib=4, used_mib=3 * GIB)]

    placement = place(make_request(forced_host=2), hosts, Policy.MOST_FREE_MEMORY)

    assert placement.host_id is None
    assert placement.reason == (
        "forced host b cannot take this desktop (2048 MiB, 2 vCPUs): it has only 1024 MiB free"
    )


def test_forced_host_must_still_reach_the_desktops_pool_and_have_its_tags() -> None:
    hosts = [make_host(1, name="a", storage_pools=frozenset({1}))]
    request = make_request(forced_host=1, storage_pool=1, required_tags=frozenset({"gpu"}))

    placement = place(request, hosts, Policy.PACK)

    assert placement.reason == (
        "forced host a cannot take this desktop (2048 MiB, 2 vCPUs, pool 1, tag gpu): "
        "it lacks tag gpu"
    )


def test_unknown_forced_host_fails_with_a_reason() -> None:
    placement = place(make_request(forced_host=99), [make_host(1)], Policy.PACK)

    assert placement.host_id is None
    assert placement.reason == "forced host 99 is not a known hypervisor"


def test_favourite_host_is_chosen_when_it_fits_even_if_the_policy_prefers_another() -> None:
    hosts = [make_host(1), make_host(2, used_mib=40 * GIB)]

    placement = place(make_request(favourite_host=2), hosts, Policy.MOST_FREE_MEMORY)

    assert placement.host_id == 2
    assert placement.reason == "placed on hv2, the favourite host"


def test_favourite_host_that_cannot_take_the_desktop_falls_back_to_the_policy() -> None:
    hosts = [make_host(1), make_host(2, mode=HostMode.MAINTENANCE), make_host(3, used_mib=GIB)]

    placement = place(make_request(favourite_host=2), hosts, Policy.MOST_FREE_MEMORY)

    assert placement.host_id == 1


# Bursts: in-flight charging


def test_a_class_of_thirty_starting_at_once_spreads_with_most_free_memory() -> None:
    state = FleetState([make_host(host_id) for host_id in (1, 2, 3)])

    chosen = Counter(
        state.place(make_request(), Policy.MOST_FREE_MEMORY).host_id for _ in range(30)
    )

    assert chosen == {1: 10, 2: 10, 3: 10}
    assert spread(state.hosts) == 0.0


def test_without_in_flight_charging_a_burst_would_pile_onto_one_host() -> None:
    hosts = [make_host(host_id) for host_id in (1, 2, 3)]

    chosen = {place(make_request(), hosts, Policy.MOST_FREE_MEMORY).host_id for _ in range(30)}

    assert chosen == {1}


def test_a_burst_under_least_cpu_load_spreads_too() -> None:
    state = FleetState([make_host(host_id, cpus=8) for host_id in (1, 2, 3)])

    chosen = Counter(state.place(make_request(), Policy.LEAST_CPU_LOAD).host_id for _ in range(30))

    assert chosen == {1: 10, 2: 10, 3: 10}


def test_fleet_state_charges_in_flight_memory_and_vcpus_and_leaves_the_snapshot_alone() -> None:
    original = make_host(1)
    state = FleetState([original])

    state.place(make_request(memory_mib=3 * GIB, vcpus=3), Policy.PACK)

    assert state.host(1).in_flight_memory_mib == 3 * GIB
    assert state.host(1).in_flight_vcpus == 3
    assert state.round_robin_cursor == 1
    assert original.in_flight_memory_mib == 0


def test_fleet_state_fails_cleanly_once_the_fleet_is_full() -> None:
    state = FleetState([make_host(1, memory_gib=4), make_host(2, memory_gib=4)])

    results = [state.place(make_request(), Policy.MOST_FREE_MEMORY) for _ in range(5)]

    assert [result.host_id for result in results] == [1, 2, 1, 2, None]
    assert results[-1].reason.endswith("hosts hv1, hv2 have at most 0 MiB free")


# Random fleets: the hard constraints hold whatever the inputs.
# (A property test in spirit; hypothesis is not installed, so seeds drive it.)

TAGS = ("gpu", "ssd", "room-12")


def random_host(rng: random.Random, host_id: int) -> HostSnapshot:
    memory_mib = rng.choice((8, 16, 64, 256)) * GIB
    memory_overcommit = rng.choice((1.0, 1.0, 1.25, 1.5))
    cpus = rng.choice((2, 4, 16, 64))
    cpu_overcommit = rng.choice((1.0, 2.0, 4.0))
    allocated = rng.randint(0, int(memory_mib * memory_overcommit))
    return HostSnapshot(
        id=host_id,
        name=f"hv{host_id}",
        memory_mib=memory_mib,
        cpus=cpus,
        free_memory_mib=max(memory_mib - allocated, 0),
        cpu_load=rng.random(),
        allocated_memory_mib=allocated,
        allocated_vcpus=rng.randint(0, int(cpus * cpu_overcommit)),
        memory_overcommit=memory_overcommit,
        cpu_overcommit=cpu_overcommit,
        mode=rng.choice((HostMode.ENABLED,) * 6 + (HostMode.MAINTENANCE, HostMode.DISABLED)),
        online=rng.random() > 0.1,
        tags=frozenset(tag for tag in TAGS if rng.random() < 0.4),
        storage_pools=frozenset(pool for pool in (1, 2, 3) if rng.random() < 0.7),
    )


def random_request(rng: random.Random, host_count: int) -> DesktopRequest:
    return DesktopRequest(
        memory_mib=rng.choice((512, 1024, 2048, 4096, 8192, 16384)),
        vcpus=rng.randint(1, 8),
        required_tags=frozenset(tag for tag in TAGS if rng.random() < 0.1),
        storage_pool=rng.choice((None, 1, 2, 3)),
        forced_host=rng.randint(1, host_count + 1) if rng.random() < 0.1 else None,
        favourite_host=rng.randint(1, host_count) if rng.random() < 0.2 else None,
    )


@pytest.mark.parametrize("seed", range(40))
def test_no_placement_ever_breaks_capacity_and_none_fails_while_a_host_fits(seed: int) -> None:
    rng = random.Random(seed)
    hosts = [random_host(rng, host_id) for host_id in range(1, rng.randint(1, 12) + 1)]
    for policy in Policy:
        state = FleetState(hosts, round_robin_cursor=rng.randint(0, len(hosts)))
        for _ in range(80):
            request = random_request(rng, len(hosts))
            forced = request.forced_host is not None
            fitting = [
                host.id
                for host in state.hosts
                if fits_by_hand(host, request, forced=forced)
                and (not forced or host.id == request.forced_host)
            ]

            placement = state.place(request, policy)

            if placement.host_id is None:
                assert fitting == [], placement.reason
                assert placement.reason
            else:
                assert placement.host_id in fitting
                if request.favourite_host in fitting and not forced:
                    assert placement.host_id == request.favourite_host
                assert within_capacity(state.host(placement.host_id))


# Spread


def test_spread_is_max_minus_min_use_share_over_online_enabled_hosts() -> None:
    hosts = [
        make_host(1, memory_gib=100, used_mib=70 * GIB),
        make_host(2, memory_gib=10, used_mib=2 * GIB),
        make_host(3, memory_gib=10, used_mib=10 * GIB, mode=HostMode.MAINTENANCE),
        make_host(4, memory_gib=10, online=False),
        make_host(5, memory_gib=10, mode=HostMode.DISABLED),
    ]

    assert spread(hosts) == pytest.approx(0.7 - 0.2)


def test_spread_counts_memory_of_starts_in_flight() -> None:
    hosts = [make_host(1, memory_gib=10, in_flight_memory_mib=5 * GIB), make_host(2, memory_gib=10)]

    assert spread(hosts) == pytest.approx(0.5)


def test_spread_of_one_host_or_none_is_zero() -> None:
    assert spread([make_host(1, used_mib=GIB)]) == 0.0
    assert spread([]) == 0.0


# Rebalancing


def running_fleet(
    layout: dict[int, list[int]], *, memory_gib: int = 16, **host_changes: Any
) -> tuple[list[HostSnapshot], list[RunningDesktop]]:
    """Hosts with the given desktop sizes (GiB) running on them, as the last sample saw."""
    hosts: list[HostSnapshot] = []
    desktops: list[RunningDesktop] = []
    for host_id, sizes in layout.items():
        for size in sizes:
            desktops.append(
                RunningDesktop(
                    id=len(desktops) + 1, host_id=host_id, memory_mib=size * GIB, vcpus=1
                )
            )
        hosts.append(
            make_host(
                host_id,
                memory_gib=memory_gib,
                used_mib=sum(sizes) * GIB,
                allocated_vcpus=len(sizes),
                **host_changes,
            )
        )
    return hosts, desktops


def test_plan_is_empty_when_the_spread_is_already_under_the_threshold() -> None:
    hosts, desktops = running_fleet({1: [4, 4], 2: [4, 2]})  # 50% and 37.5%

    assert plan_rebalance(hosts, desktops, max_moves=10, threshold=0.2) == []


def test_plan_moves_the_desktop_that_best_evens_out_the_pair() -> None:
    hosts, desktops = running_fleet({1: [2, 6, 8], 2: []})

    moves = plan_rebalance(hosts, desktops, max_moves=10, threshold=0.05)

    assert moves == [
        Move(
            desktop_id=3,
            source_host_id=1,
            target_host_id=2,
            kind=MoveKind.LIVE_MIGRATION,
            reason=MoveReason.BALANCE,
        )
    ]
    assert spread(project_moves(hosts, desktops, moves)) == 0.0


def test_plan_moves_from_the_most_used_host_to_the_least_used() -> None:
    hosts, desktops = running_fleet({1: [2, 2, 2], 2: [2] * 7, 3: [2] * 4})

    first = plan_rebalance(hosts, desktops, max_moves=1, threshold=0.05)

    assert [(move.source_host_id, move.target_host_id) for move in first] == [(2, 1)]


def test_plan_stops_at_max_moves() -> None:
    hosts, desktops = running_fleet({1: [1] * 16, 2: [], 3: []})

    moves = plan_rebalance(hosts, desktops, max_moves=3, threshold=0.01)

    assert len(moves) == 3


def test_plan_on_a_hundred_skewed_hosts_reaches_the_threshold() -> None:
    rng = random.Random(100)
    layout: dict[int, list[int]] = {}
    for host_id in range(1, 101):
        # Thirty hosts just came back empty; the rest are loaded to very different levels.
        layout[host_id] = [] if host_id <= 30 else [rng.choice((1, 2, 4))] * rng.randint(4, 14)
    hosts, desktops = running_fleet(layout, memory_gib=64)
    assert spread(hosts) > 0.5

    moves = plan_rebalance(hosts, desktops, max_moves=10_000, threshold=0.10)

    after = project_moves(hosts, desktops, moves)
    assert spread(after) < 0.10
    assert all(within_capacity(host) for host in after)
    assert {move.reason for move in moves} == {MoveReason.BALANCE}


def test_drain_empties_a_maintenance_host() -> None:
    hosts, desktops = running_fleet({1: [2, 4, 1, 1], 2: [4], 3: [2]})
    hosts[0] = make_host(1, memory_gib=16, used_mib=8 * GIB, mode=HostMode.MAINTENANCE)

    moves = plan_rebalance(hosts, desktops, max_moves=10, threshold=1.0)

    assert sorted(move.desktop_id for move in moves) == [1, 2, 3, 4]
    assert {move.reason for move in moves} == {MoveReason.DRAIN}
    assert {move.target_host_id for move in moves} <= {2, 3}
    assert project_moves(hosts, desktops, moves)[0].allocated_memory_mib == 0


def test_drain_moves_count_first_against_max_moves() -> None:
    hosts, desktops = running_fleet({1: [2, 2, 2], 2: [1] * 14, 3: [], 4: []})
    hosts[0] = make_host(1, memory_gib=16, used_mib=6 * GIB, mode=HostMode.MAINTENANCE)

    moves = plan_rebalance(hosts, desktops, max_moves=4, threshold=0.05)

    assert [move.reason for move in moves] == [MoveReason.DRAIN] * 3 + [MoveReason.BALANCE]


def test_drain_sends_each_desktop_to_the_least_used_host_that_can_take_it() -> None:
    hosts, desktops = running_fleet({1: [4], 2: [8], 3: [2], 4: []})
    hosts[0] = make_host(1, memory_gib=16, used_mib=4 * GIB, mode=HostMode.MAINTENANCE)
    hosts[3] = make_host(4, memory_gib=16, online=False)

    moves = plan_rebalance(hosts, desktops, max_moves=10, threshold=1.0)

    assert [(move.desktop_id, move.target_host_id) for move in moves] == [(1, 3)]


def test_a_desktop_that_fits_nowhere_stays_on_the_draining_host() -> None:
    hosts, desktops = running_fleet({1: [12], 2: [8]})
    hosts[0] = make_host(1, memory_gib=16, used_mib=12 * GIB, mode=HostMode.MAINTENANCE)

    assert plan_rebalance(hosts, desktops, max_moves=10, threshold=1.0) == []


def test_a_desktop_that_cannot_be_live_migrated_moves_at_its_next_start() -> None:
    hosts, desktops = running_fleet({1: [8, 8], 2: []})
    desktops = [
        RunningDesktop(
            id=desktop.id, host_id=1, memory_mib=desktop.memory_mib, vcpus=1, migratable=False
        )
        for desktop in desktops
    ]

    moves = plan_rebalance(hosts, desktops, max_moves=10, threshold=0.05)

    assert [(move.desktop_id, move.kind) for move in moves] == [(1, MoveKind.AT_NEXT_START)]


def test_live_migratable_desktops_are_preferred_for_balancing() -> None:
    hosts, desktops = running_fleet({1: [8, 8], 2: []})
    desktops[1] = RunningDesktop(id=2, host_id=1, memory_mib=8 * GIB, vcpus=1, migratable=False)

    moves = plan_rebalance(hosts, desktops, max_moves=10, threshold=0.05)

    assert [(move.desktop_id, move.kind) for move in moves] == [(1, MoveKind.LIVE_MIGRATION)]


def test_desktops_on_an_offline_maintenance_host_move_at_their_next_start() -> None:
    hosts, desktops = running_fleet({1: [2], 2: []})
    hosts[0] = make_host(
        1, memory_gib=16, used_mib=2 * GIB, mode=HostMode.MAINTENANCE, online=False
    )

    moves = plan_rebalance(hosts, desktops, max_moves=10, threshold=1.0)

    assert [(move.target_host_id, move.kind) for move in moves] == [(2, MoveKind.AT_NEXT_START)]


def test_plan_never_moves_a_desktop_to_a_host_without_its_tag_or_pool() -> None:
    gpu_and_both_pools = make_host(
        1,
        memory_gib=16,
        used_mib=10 * GIB,
        tags=frozenset({"gpu"}),
        storage_pools=frozenset({1, 2}),
    )
    hosts = [gpu_and_both_pools, make_host(2, memory_gib=16, storage_pools=frozenset({1}))]
    # Without the constraints the 4 GiB ones, closer to the ideal 5 GiB, would go first.
    desktops = [
        RunningDesktop(
            id=1, host_id=1, memory_mib=4 * GIB, vcpus=1, required_tags=frozenset({"gpu"})
        ),
        RunningDesktop(id=2, host_id=1, memory_mib=4 * GIB, vcpus=1, storage_pool=2),
        RunningDesktop(id=3, host_id=1, memory_mib=2 * GIB, vcpus=1, storage_pool=1),
    ]

    moves = plan_rebalance(hosts, desktops, max_moves=10, threshold=0.05)

    assert [move.desktop_id for move in moves] == [3]


def test_plan_never_moves_a_desktop_to_a_host_without_room() -> None:
    hosts, desktops = running_fleet({1: [8, 8], 2: []})
    hosts[1] = make_host(2, memory_gib=16, cpus=1, cpu_overcommit=1.0, allocated_vcpus=1)

    assert plan_rebalance(hosts, desktops, max_moves=10, threshold=0.05) == []


def test_when_the_most_used_host_cannot_give_the_least_used_host_pulls_from_others() -> None:
    hosts, desktops = running_fleet({1: [8, 8], 2: [4, 4, 4], 3: []})
    hosts[0] = make_host(1, memory_gib=16, used_mib=16 * GIB, tags=frozenset({"gpu"}))
    gpu_only = frozenset({"gpu"})
    desktops[:2] = [
        RunningDesktop(id=1, host_id=1, memory_mib=8 * GIB, vcpus=1, required_tags=gpu_only),
        RunningDesktop(id=2, host_id=1, memory_mib=8 * GIB, vcpus=1, required_tags=gpu_only),
    ]

    moves = plan_rebalance(hosts, desktops, max_moves=10, threshold=0.05)

    assert [(move.source_host_id, move.target_host_id) for move in moves] == [(2, 3)]
    assert spread(project_moves(hosts, desktops, moves)) == pytest.approx(0.75)


def random_running_fleet(rng: random.Random) -> tuple[list[HostSnapshot], list[RunningDesktop]]:
    hosts = [random_host(rng, host_id) for host_id in range(1, rng.randint(2, 16) + 1)]
    hosts = [
        HostSnapshot(
            id=host.id,
            name=host.name,
            memory_mib=host.memory_mib,
            cpus=host.cpus,
            free_memory_mib=host.memory_mib,
            memory_overcommit=host.memory_overcommit,
            cpu_overcommit=host.cpu_overcommit,
            mode=host.mode,
            online=host.online or host.mode == HostMode.MAINTENANCE,
            tags=host.tags,
            storage_pools=host.storage_pools,
        )
        for host in hosts
    ]
    state = FleetState(hosts)
    desktops: list[RunningDesktop] = []
    for desktop_id in range(1, rng.randint(0, 200) + 1):
        request = random_request(rng, len(hosts))
        allowed = [host for host in state.hosts if fits_by_hand(host, request, forced=True)]
        if not allowed:
            continue
        host = rng.choice(allowed)
        state.charge(host.id, request)
        desktops.append(
            RunningDesktop(
                id=desktop_id,
                host_id=host.id,
                memory_mib=request.memory_mib,
                vcpus=request.vcpus,
                required_tags=request.required_tags,
                storage_pool=request.storage_pool,
                migratable=rng.random() < 0.8,
            )
        )
    # The stats sample arrives: what was in flight is now allocated and in use.
    sampled = [
        HostSnapshot(
            id=host.id,
            name=host.name,
            memory_mib=host.memory_mib,
            cpus=host.cpus,
            free_memory_mib=max(host.memory_mib - host.in_flight_memory_mib, 0),
            allocated_memory_mib=host.in_flight_memory_mib,
            allocated_vcpus=host.in_flight_vcpus,
            memory_overcommit=host.memory_overcommit,
            cpu_overcommit=host.cpu_overcommit,
            mode=host.mode,
            online=host.online,
            tags=host.tags,
            storage_pools=host.storage_pools,
        )
        for host in state.hosts
    ]
    return sampled, desktops


@pytest.mark.parametrize("seed", range(40))
def test_plan_never_widens_the_spread_nor_breaks_a_hard_constraint(seed: int) -> None:
    rng = random.Random(seed)
    hosts, desktops = random_running_fleet(rng)
    by_id = {desktop.id: desktop for desktop in desktops}

    moves = plan_rebalance(
        hosts, desktops, max_moves=rng.randint(1, 300), threshold=rng.random() / 4
    )

    assert len({move.desktop_id for move in moves}) == len(moves)
    reasons = [move.reason for move in moves]
    assert reasons == sorted(reasons, key=lambda reason: reason != MoveReason.DRAIN)
    current: tuple[HostSnapshot, ...] = tuple(hosts)
    for move in moves:
        desktop = by_id[move.desktop_id]
        assert desktop.host_id == move.source_host_id
        target = next(host for host in current if host.id == move.target_host_id)
        request = DesktopRequest(
            memory_mib=desktop.memory_mib,
            vcpus=desktop.vcpus,
            required_tags=desktop.required_tags,
            storage_pool=desktop.storage_pool,
        )
        assert fits_by_hand(target, request)
        if move.kind is MoveKind.LIVE_MIGRATION:
            assert desktop.migratable
        after = project_moves(current, desktops, [move])
        if move.reason is MoveReason.BALANCE:
            assert spread(after) <= spread(current) + 1e-9
        current = after
