"""Benchmark of the balancer's pure core (issue 4, "Many hypervisors").

10,000 desktop placements over 100 simulated hosts of mixed sizes, once per policy, then
rebalancing plans over the same fleet after a deliberately skewed start. Seeded, so two
runs on the same machine see the same fleet and the same decisions.

    .venv/bin/python bench/bench_placement.py [--json results.json] [--seed 4]

Targets from the issue: a placement decision under 1 ms, a full plan under 1 s, a spread
of memory use (max minus min, as a share of capacity) under 10%.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

# Run as a script from anywhere: the project root is not on sys.path by itself.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypervisors.placement import (
    DesktopRequest,
    FleetState,
    HostMode,
    HostSnapshot,
    MoveKind,
    MoveReason,
    Policy,
    RunningDesktop,
    plan_rebalance,
    project_moves,
    spread,
)

GIB = 1024
PLACEMENT_TARGET_MS = 1.0
PLAN_TARGET_S = 1.0
SPREAD_TARGET = 0.10
# (memory GiB, CPUs): a school's mix of old small hosts and newer big ones.
HOST_SIZES = ((128, 32), (256, 64), (384, 96), (512, 128))
DESKTOP_MEMORY_MIB = (1024, 2048, 2048, 4096)
DESKTOP_VCPUS = (1, 2, 2, 4)
SHARED_POOL = 1
FAST_POOL = 2  # reached by 30 hosts only
GPU = "gpu"  # on 10 hosts only


def build_fleet(rng: random.Random, host_count: int) -> list[HostSnapshot]:
    """Empty hosts of mixed sizes; some hold a GPU, some reach a second storage pool."""
    gpu_hosts = set(rng.sample(range(1, host_count + 1), k=max(host_count // 10, 1)))
    fast_pool_hosts = set(rng.sample(range(1, host_count + 1), k=max(host_count * 3 // 10, 1)))
    hosts = []
    for host_id in range(1, host_count + 1):
        memory_gib, cpus = rng.choice(HOST_SIZES)
        host_os_mib = rng.randint(1024, 3072)
        hosts.append(
            HostSnapshot(
                id=host_id,
                name=f"hv{host_id:03}",
                memory_mib=memory_gib * GIB,
                cpus=cpus,
                free_memory_mib=memory_gib * GIB - host_os_mib,
                cpu_load=rng.uniform(0.02, 0.2),
                memory_overcommit=rng.choice((1.0, 1.0, 1.0, 1.2)),
                cpu_overcommit=4.0,
                tags=frozenset({GPU}) if host_id in gpu_hosts else frozenset(),
                storage_pools=frozenset(
                    {SHARED_POOL, FAST_POOL} if host_id in fast_pool_hosts else {SHARED_POOL}
                ),
            )
        )
    return hosts


def build_requests(rng: random.Random, count: int) -> list[DesktopRequest]:
    """Mostly plain desktops; 2% need a GPU, 10% live in the pool only 30 hosts reach."""
    return [
        DesktopRequest(
            memory_mib=rng.choice(DESKTOP_MEMORY_MIB),
            vcpus=rng.choice(DESKTOP_VCPUS),
            required_tags=frozenset({GPU}) if rng.random() < 0.02 else frozenset(),
            storage_pool=FAST_POOL if rng.random() < 0.10 else SHARED_POOL,
        )
        for _ in range(count)
    ]


def with_some_hosts_out(hosts: list[HostSnapshot]) -> list[HostSnapshot]:
    """Two hosts in maintenance and one offline, so every decision has hosts to skip."""
    changed = list(hosts)
    changed[3] = replace(changed[3], mode=HostMode.MAINTENANCE)
    changed[41] = replace(changed[41], mode=HostMode.MAINTENANCE)
    changed[77] = replace(changed[77], online=False)
    return changed


def percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, int(fraction * len(sorted_values)))
    return sorted_values[index]


def bench_policy(
    hosts: list[HostSnapshot], requests: list[DesktopRequest], policy: Policy
) -> dict[str, Any]:
    """Place every request in turn; each decision sees the ones before it (in flight)."""
    state = FleetState(hosts)
    durations_ns: list[int] = []
    failed = 0
    clock = time.perf_counter_ns
    for request in requests:
        started = clock()
        placement = state.place(request, policy)  # the decision, plus charging the host
        durations_ns.append(clock() - started)
        if placement.host_id is None:
            failed += 1
    durations_us = sorted(duration / 1000 for duration in durations_ns)
    total_s = sum(durations_ns) / 1e9
    shares = [host.memory_use_share for host in state.hosts if host.takes_new_desktops]
    return {
        "policy": policy.value,
        "decisions": len(requests),
        "decisions_per_second": len(requests) / total_s,
        "mean_us": statistics.fmean(durations_us),
        "p99_us": percentile(durations_us, 0.99),
        "max_us": durations_us[-1],
        "placed": len(requests) - failed,
        "failed": failed,
        "spread": spread(state.hosts),
        "lowest_use": min(shares),
        "highest_use": max(shares),
    }


def sampled(state: FleetState) -> list[HostSnapshot]:
    """The next stats sample arrives: what was in flight is now running and in use."""
    return [
        replace(
            host,
            allocated_memory_mib=host.allocated_memory_mib + host.in_flight_memory_mib,
            allocated_vcpus=host.allocated_vcpus + host.in_flight_vcpus,
            free_memory_mib=host.free_memory_mib - host.in_flight_memory_mib,
            in_flight_memory_mib=0,
            in_flight_vcpus=0,
        )
        for host in state.hosts
    ]


def skewed_start(
    rng: random.Random, hosts: list[HostSnapshot], requests: list[DesktopRequest]
) -> tuple[list[HostSnapshot], list[RunningDesktop]]:
    """The whole fleet filled with "pack" (the worst case for balance), then two of the
    fullest hosts put in maintenance. 90% of desktops can be live-migrated."""
    state = FleetState(hosts)
    desktops: list[RunningDesktop] = []
    for desktop_id, request in enumerate(requests, start=1):
        placement = state.place(request, Policy.PACK)
        if placement.host_id is None:
            continue
        desktops.append(
            RunningDesktop(
                id=desktop_id,
                host_id=placement.host_id,
                memory_mib=request.memory_mib,
                vcpus=request.vcpus,
                required_tags=request.required_tags,
                storage_pool=request.storage_pool,
                migratable=rng.random() < 0.9,
            )
        )
    running = sampled(state)
    for position in (0, 1):  # pack filled the lowest ids first
        running[position] = replace(running[position], mode=HostMode.MAINTENANCE)
    return running, desktops


def bench_plan(
    hosts: list[HostSnapshot], desktops: list[RunningDesktop], max_moves: int
) -> dict[str, Any]:
    started = time.perf_counter()
    moves = plan_rebalance(hosts, desktops, max_moves=max_moves, threshold=SPREAD_TARGET)
    elapsed = time.perf_counter() - started
    live = [move for move in moves if move.kind is MoveKind.LIVE_MIGRATION]
    drained = project_moves(hosts, desktops, moves)
    return {
        "max_moves": max_moves,
        "plan_ms": elapsed * 1000,
        "moves": len(moves),
        "live_migrations": len(live),
        "at_next_start": len(moves) - len(live),
        "drain_moves": sum(move.reason is MoveReason.DRAIN for move in moves),
        "spread_before": spread(hosts),
        "spread_after": spread(drained),
        "spread_after_live_moves_only": spread(project_moves(hosts, desktops, live)),
        "left_on_maintenance_hosts": sum(
            1
            for desktop in desktops
            if desktop.host_id in {host.id for host in hosts if host.mode == HostMode.MAINTENANCE}
        )
        - sum(move.reason is MoveReason.DRAIN for move in moves),
    }


def percent(value: float) -> str:
    return f"{value * 100:.2f}%"


def render(results: dict[str, Any]) -> str:
    setup = results["setup"]
    lines = [
        f"## Placement: {setup['desktops']:,} desktops over {setup['hosts']} hosts "
        f"(seed {setup['seed']}; 2 hosts in maintenance, 1 offline)",
        "",
        "| policy | decisions/s | mean | p99 | max | placed | failed | spread (min–max use) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in results["placement"]:
        lines.append(
            f"| {row['policy']} | {row['decisions_per_second']:,.0f} | {row['mean_us']:.0f} µs"
            f" | {row['p99_us']:.0f} µs | {row['max_us']:.0f} µs | {row['placed']:,}"
            f" | {row['failed']} | {percent(row['spread'])} ({percent(row['lowest_use'])}–"
            f"{percent(row['highest_use'])}) |"
        )
    lines += [
        "",
        "## Rebalancing plan after a skewed start (filled with pack, 2 full hosts put in "
        f"maintenance; threshold {percent(SPREAD_TARGET)})",
        "",
        "| max moves | plan time | moves | live | at next start | drain | spread before "
        "| spread after | after live moves only |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in results["rebalance"]:
        lines.append(
            f"| {row['max_moves']:,} | {row['plan_ms']:.0f} ms | {row['moves']:,}"
            f" | {row['live_migrations']:,} | {row['at_next_start']:,} | {row['drain_moves']}"
            f" | {percent(row['spread_before'])} | {percent(row['spread_after'])}"
            f" | {percent(row['spread_after_live_moves_only'])} |"
        )
    targets = results["targets"]
    lines += ["", "## Targets", ""]
    for target in targets:
        verdict = "met" if target["met"] else "MISSED"
        lines.append(f"- {target['name']}: {target['measured']} ({verdict})")
    environment = results["environment"]
    lines += [
        "",
        f"Python {environment['python']} on {environment['machine']}, "
        f"{environment['cpus']} CPUs; total run {results['run_seconds']:.1f} s.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--desktops", type=int, default=10_000)
    parser.add_argument(
        "--max-moves",
        type=int,
        default=200,
        help="the bound of one routine rebalancing run (a full plan is benchmarked too)",
    )
    arguments = parser.parse_args()
    run_started = time.perf_counter()

    rng = random.Random(arguments.seed)
    fleet = build_fleet(rng, arguments.hosts)
    requests = build_requests(rng, arguments.desktops)

    placement_hosts = with_some_hosts_out(fleet)
    placement_rows = [bench_policy(placement_hosts, requests, policy) for policy in Policy]

    running, desktops = skewed_start(rng, fleet, requests)
    rebalance_rows = [
        bench_plan(running, desktops, max_moves=len(desktops)),
        bench_plan(running, desktops, max_moves=arguments.max_moves),
    ]

    worst_p99_ms = max(row["p99_us"] for row in placement_rows) / 1000
    full_plan = rebalance_rows[0]
    balanced = next(row for row in placement_rows if row["policy"] == Policy.MOST_FREE_MEMORY)
    results: dict[str, Any] = {
        "setup": {"seed": arguments.seed, "hosts": arguments.hosts, "desktops": arguments.desktops},
        "placement": placement_rows,
        "rebalance": rebalance_rows,
        "targets": [
            {
                "name": "placement decision < 1 ms (worst p99 over all policies)",
                "measured": f"{worst_p99_ms * 1000:.0f} µs",
                "met": worst_p99_ms < PLACEMENT_TARGET_MS,
            },
            {
                "name": "full plan < 1 s",
                "measured": f"{full_plan['plan_ms']:.0f} ms for {full_plan['moves']:,} moves",
                "met": full_plan["plan_ms"] / 1000 < PLAN_TARGET_S,
            },
            {
                "name": "spread < 10% after placing with most_free_memory",
                "measured": percent(balanced["spread"]),
                "met": balanced["spread"] < SPREAD_TARGET,
            },
            {
                "name": "spread < 10% after the full plan",
                "measured": percent(full_plan["spread_after"]),
                "met": full_plan["spread_after"] < SPREAD_TARGET,
            },
        ],
        "environment": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        },
    }
    results["run_seconds"] = time.perf_counter() - run_started
    print(render(results))
    if arguments.json:
        arguments.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
