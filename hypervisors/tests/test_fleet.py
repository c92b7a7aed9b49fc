"""The fleet wired to the database: snapshots, placement with in-flight charges, monitoring,
drain and rebalancing, over several libvirt `test:///path/node.xml` hosts of different sizes.

Each node file is an independent host with its own CPUs, memory and domains. libvirt's
test driver cannot migrate, so the drain and rebalancing tests replace the one migration
call with a double that moves the domain between the two test hosts the way a live
migration would (defined and running on the target, gone from the source).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from accounts.choices import Role
from accounts.models import User
from accounts.tests.factories import CourseFactory, UserFactory
from desktops.choices import DesktopStatus
from desktops.fleet.drain import NO_DRAIN, hypervisor_drain, hypervisor_drain_step
from desktops.fleet.monitoring import (
    hypervisor_record_sample,
    hypervisor_refresh,
    hypervisors_monitor,
)
from desktops.fleet.moves import desktop_live_migrate
from desktops.fleet.placement import hypervisor_place, hypervisors_place_many
from desktops.fleet.rebalancing import hypervisors_rebalance
from desktops.fleet.selectors import drain_progress, fleet_snapshot
from desktops.models import Desktop, DesktopEvent
from desktops.services.lifecycle import desktop_shutdown, desktop_start, desktop_stop
from desktops.services.provisioning import desktop_create, desktops_create_bulk
from desktops.tasks import rebalance_hypervisors, reconcile_all_hypervisors
from hypervisors.choices import (
    DrainPolicy,
    HypervisorMode,
    HypervisorState,
    MoveKind,
    MoveReason,
    MoveStatus,
    PlacementPolicy,
    PoolPurpose,
)
from hypervisors.drivers import libvirt_driver
from hypervisors.drivers.domain_xml import DiskSpec, DomainSpec, build_domain_xml
from hypervisors.fleet import LockUnavailableError, fleet_lock
from hypervisors.models import (
    DesktopMove,
    Disk,
    Hypervisor,
    HypervisorEvent,
    PlacementCharge,
    PlacementRule,
    StoragePool,
)
from hypervisors.selectors import storage_pool_directories
from hypervisors.services.hosts import hypervisor_enable
from hypervisors.tests.conftest import HostMaker, RoutedRunner
from isard.celery import app
from isard.core.errors import NoCapacityError, PermissionDeniedError
from isard.core.tasks import send_task
from templates_app.models import HardwareProfile

pytestmark = pytest.mark.django_db

S = DesktopStatus
GIB = 1024
UNREACHABLE_URI = "qemu+unix:///system?socket=/nonexistent/isard-test/libvirt-sock"


def hardware(memory_mib: int, vcpus: int = 1) -> HardwareProfile:
    profile, _ = HardwareProfile.objects.get_or_create(
        name=f"{memory_mib} MiB {vcpus} vCPU",
        defaults={"memory_mib": memory_mib, "vcpus": vcpus, "networks": []},
    )
    return profile


def owner() -> User:
    """One owner for the desktops of a test (a factory user per desktop hashes a password)."""
    user, _ = User.objects.get_or_create(username="fleet-owner", defaults={"role": Role.ADMIN})
    return user


def make_desktop(
    *,
    host: Hypervisor | None = None,
    memory_mib: int = 2 * GIB,
    vcpus: int = 1,
    status: DesktopStatus = S.STARTED,
    pool: StoragePool | None = None,
    course: Any = None,
    run_domain: bool = False,
) -> Desktop:
    """A desktop row; with `run_domain` its domain is defined (and running if STARTED)."""
    disk = None
    if pool is not None:
        disk = Disk.objects.create(pool=pool, path=f"{pool.path}/{uuid.uuid4()}.qcow2")
    desktop = Desktop.objects.create(
        name=f"desktop {uuid.uuid4().hex[:6]}",
        owner=owner(),
        hardware=hardware(memory_mib, vcpus),
        status=status,
        hypervisor=host,
        disk=disk,
        course=course,
    )
    if run_domain:
        assert host is not None
        spec = DomainSpec(
            name=desktop.domain_name,
            uuid=str(desktop.uuid),
            domain_type="qemu",
            vcpus=vcpus,
            memory_mib=memory_mib,
            disks=(DiskSpec(path=disk.path if disk else "/tmp/none.qcow2"),),
            spice=False,
            vnc=False,
        )
        pools = (*storage_pool_directories(), Path("/tmp"))
        libvirt_driver.define_domain(host.uri, build_domain_xml(spec, storage_pools=pools))
        if status == S.STARTED:
            libvirt_driver.start_domain(host.uri, desktop.domain_name)
    return desktop


def snapshot_of(host: Hypervisor) -> Any:
    return next(item for item in fleet_snapshot().hosts if item.id == host.pk)


@pytest.fixture
def fake_migration(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    """Replace libvirt's migration (the test driver has none) by moving the domain."""
    calls: list[tuple[str, str, str]] = []

    def migrate(source_uri: str, target_uri: str, name: str, **options: Any) -> None:
        calls.append((source_uri, target_uri, name))
        xml = libvirt_driver.domain_xml(source_uri, name)
        libvirt_driver.define_domain(target_uri, xml)
        libvirt_driver.start_domain(target_uri, name)
        libvirt_driver.undefine_domain(source_uri, name)

    monkeypatch.setattr(libvirt_driver, "migrate_domain", migrate)
    return calls


@pytest.fixture
def admin() -> Any:
    return UserFactory.create(role=Role.ADMIN, is_staff=True, is_superuser=True)


@pytest.fixture
def shared_pool(pools: dict[str, StoragePool]) -> StoragePool:
    pool = pools[PoolPurpose.DESKTOPS.value]
    pool.shared = True
    pool.save()
    return pool


# --- the hosts as libvirt reports them -----------------------------------------------------------


def test_each_test_host_reports_the_size_of_its_own_node_file(make_host: HostMaker) -> None:
    small = make_host("small", 16, 4)
    big = make_host("big", 64, 16)
    assert (small.cpus, small.memory_mib) == (4, 16 * GIB)
    assert (big.cpus, big.memory_mib) == (16, 64 * GIB)
    assert small.state == big.state == HypervisorState.ONLINE
    # The test driver cannot tell its free memory: it is estimated from what is booked.
    assert small.free_memory_mib == 16 * GIB


def test_cpu_load_is_the_busy_share_between_two_samples(make_host: HostMaker) -> None:
    host = make_host("h", 16, 4)

    def sample(busy: int, total: int) -> libvirt_driver.HostSample:
        return libvirt_driver.HostSample("h", 4, 16 * GIB, 8 * GIB, 0, busy, total)

    host = hypervisor_record_sample(hypervisor=host, sample=sample(1_000, 10_000))
    host = hypervisor_record_sample(hypervisor=host, sample=sample(4_000, 14_000))
    assert host.cpu_load == pytest.approx(0.75)
    assert host.free_memory_mib == 8 * GIB


# --- placement -----------------------------------------------------------------------------------


def place(desktop: Desktop, **options: Any) -> Hypervisor:
    return hypervisor_place(
        memory_mib=desktop.hardware.memory_mib,
        vcpus=desktop.hardware.vcpus,
        desktop=desktop,
        **options,
    )


def test_a_class_starting_in_the_same_second_spreads_by_capacity(make_host: HostMaker) -> None:
    for name, memory_gib in (("small", 16), ("medium", 32), ("large", 64)):
        make_host(name, memory_gib, 8)
    starting = [make_desktop(status=S.STARTING) for _ in range(30)]

    chosen = Counter(place(desktop).name for desktop in starting)

    # Every start is charged until the next sample, so each decision sees the ones before:
    # memory use ends up the same share of each host's memory (30 x 2 GiB of 112 GiB).
    assert chosen == {"small": 5, "medium": 9, "large": 16}
    shares = [host.memory_used_mib / host.memory_mib for host in fleet_snapshot().hosts]
    assert max(shares) - min(shares) <= 2 * GIB / (16 * GIB)
    assert PlacementCharge.objects.count() == 30


def test_without_in_flight_charges_the_same_class_would_pile_onto_one_host(
    make_host: HostMaker,
) -> None:
    make_host("small", 16, 8)
    make_host("large", 64, 16)
    starting = [make_desktop(status=S.STARTING) for _ in range(6)]
    chosen = Counter(place(desktop, charge=False).name for desktop in starting)
    assert chosen == {"small": 6}


def test_pack_fills_one_host_before_the_next(make_host: HostMaker, settings: Any) -> None:
    settings.ISARD_PLACEMENT_POLICY = PlacementPolicy.PACK
    make_host("a", 8, 8)
    make_host("b", 8, 8)
    chosen = [place(make_desktop(status=S.STARTING)).name for _ in range(6)]
    assert chosen == ["a", "a", "a", "a", "b", "b"]


def test_round_robin_takes_the_hosts_in_turn_across_starts(
    make_host: HostMaker, settings: Any
) -> None:
    settings.ISARD_PLACEMENT_POLICY = PlacementPolicy.ROUND_ROBIN
    for name in ("a", "b", "c"):
        make_host(name, 32, 8)
    chosen = [place(make_desktop(status=S.STARTING)).name for _ in range(5)]
    assert chosen == ["a", "b", "c", "a", "b"]


def test_least_cpu_load_prefers_the_idle_host(make_host: HostMaker, settings: Any) -> None:
    settings.ISARD_PLACEMENT_POLICY = PlacementPolicy.LEAST_CPU_LOAD
    busy = make_host("busy", 64, 16)
    make_host("idle", 16, 4)
    Hypervisor.objects.filter(pk=busy.pk).update(cpu_load=0.9)
    Hypervisor.objects.filter(name="idle").update(cpu_load=0.1)
    assert place(make_desktop(status=S.STARTING)).name == "idle"


def test_a_courses_rule_overrides_the_installation_policy(make_host: HostMaker) -> None:
    make_host("a", 8, 8)
    make_host("b", 8, 8)
    course = CourseFactory.create()
    PlacementRule.objects.create(course=course, policy=PlacementPolicy.PACK)
    in_course = [place(make_desktop(status=S.STARTING, course=course)).name for _ in range(3)]
    assert in_course == ["a", "a", "a"]
    # Elsewhere the installation's policy (most free memory) still spreads.
    assert place(make_desktop(status=S.STARTING)).name == "b"


def test_a_forced_host_is_the_only_candidate(make_host: HostMaker) -> None:
    make_host("a", 64, 16)
    small = make_host("small", 8, 4)
    course = CourseFactory.create()
    PlacementRule.objects.create(course=course, forced_hypervisor=small)
    assert place(make_desktop(status=S.STARTING, course=course)).name == "small"

    Hypervisor.objects.filter(pk=small.pk).update(state=HypervisorState.OFFLINE)
    with pytest.raises(NoCapacityError, match=r"^Forced host small cannot take .*: it is offline"):
        place(make_desktop(status=S.STARTING, course=course))


def test_a_desktops_favourite_host_wins_over_its_courses_and_the_policy(
    make_host: HostMaker,
) -> None:
    make_host("a", 64, 16)
    b = make_host("b", 8, 4)
    c = make_host("c", 8, 4)
    course = CourseFactory.create()
    PlacementRule.objects.create(course=course, favourite_hypervisor=c)
    desktop = make_desktop(status=S.STARTING, course=course)
    PlacementRule.objects.create(desktop=desktop, favourite_hypervisor=b)
    assert place(desktop).name == "b"
    assert place(make_desktop(status=S.STARTING, course=course)).name == "c"


def test_required_tags_and_storage_pools_are_constraints_with_a_clear_refusal(
    make_host: HostMaker, pools: dict[str, StoragePool]
) -> None:
    plain = make_host("plain", 64, 16)
    gpu = make_host("gpu", 16, 8, tags=["gpu"])
    course = CourseFactory.create()
    PlacementRule.objects.create(course=course, required_tags=["gpu"])
    assert place(make_desktop(status=S.STARTING, course=course)).name == "gpu"

    # The GPU host does not reach the desktops pool: nothing fits, and the refusal says why.
    gpu.storage_pools.set([pools["base"]])
    plain.storage_pools.set([pools["base"], pools["desktops"]])
    desktop = make_desktop(status=S.STARTING, course=course, pool=pools["desktops"])
    with pytest.raises(NoCapacityError) as refused:
        place(desktop)
    assert refused.value.message == (
        "No hypervisor with 2048 MiB and 1 vCPU free in pool “desktops” with tag gpu: "
        "host gpu cannot reach pool “desktops”; host plain lacks tag gpu."
    )


def test_a_desktop_bigger_than_any_host_is_refused_at_once(make_host: HostMaker) -> None:
    make_host("a", 8, 4)
    make_host("b", 8, 4)
    with pytest.raises(NoCapacityError, match="hosts a, b have at most 8192 MiB free"):
        hypervisor_place(memory_mib=16 * GIB, vcpus=1)


def test_nothing_is_placed_on_hosts_offline_silent_in_maintenance_or_never_probed(
    make_host: HostMaker,
) -> None:
    for name in ("offline", "silent", "maintenance", "unprobed"):
        make_host(name, 64, 16)
    make_host("ok", 4, 2)
    Hypervisor.objects.filter(name="offline").update(state=HypervisorState.OFFLINE)
    Hypervisor.objects.filter(name="silent").update(unreachable_since=timezone.now())
    Hypervisor.objects.filter(name="maintenance").update(mode=HypervisorMode.MAINTENANCE)
    Hypervisor.objects.filter(name="unprobed").update(accelerator="")
    assert place(make_desktop(status=S.STARTING)).name == "ok"

    Hypervisor.objects.filter(name="ok").update(state=HypervisorState.OFFLINE)
    with pytest.raises(NoCapacityError, match=r"^No hypervisor accepts new desktops now: ask"):
        place(make_desktop(status=S.STARTING))
    Hypervisor.objects.update(state=HypervisorState.OFFLINE)
    with pytest.raises(NoCapacityError, match=r"^No hypervisor is online: ask an admin"):
        place(make_desktop(status=S.STARTING))


def test_a_start_is_charged_until_its_hosts_next_sample(make_host: HostMaker) -> None:
    host = make_host("a", 32, 8)
    desktop = make_desktop(status=S.STARTING)
    assert place(desktop) == host
    assert snapshot_of(host).in_flight_memory_mib == 2 * GIB

    # The desktop started there; the next sample shows it, so it counts as allocated once.
    Desktop.objects.filter(pk=desktop.pk).update(status=S.STARTED, hypervisor=host)
    hypervisor_refresh(hypervisor=host)
    after = snapshot_of(host)
    assert (after.in_flight_memory_mib, after.allocated_memory_mib) == (0, 2 * GIB)


def test_a_charge_expires_after_the_charge_time_even_without_a_sample(
    make_host: HostMaker, settings: Any
) -> None:
    settings.ISARD_PLACEMENT_CHARGE_SECONDS = 30
    host = make_host("a", 32, 8)
    place(make_desktop(status=S.STARTING))
    PlacementCharge.objects.update(created_at=timezone.now() - timedelta(seconds=31))
    Hypervisor.objects.filter(pk=host.pk).update(last_seen_at=timezone.now() - timedelta(hours=1))
    assert snapshot_of(host).in_flight_memory_mib == 0


def test_a_desktop_placed_again_counts_once_and_not_against_itself(make_host: HostMaker) -> None:
    host = make_host("a", 32, 8)
    desktop = make_desktop(status=S.STARTING, host=host)
    place(desktop)
    place(desktop)
    assert snapshot_of(host).in_flight_memory_mib == 2 * GIB
    assert snapshot_of(host).allocated_memory_mib == 0
    snapshot = fleet_snapshot(exclude_desktop_ids=[desktop.pk])
    assert snapshot.hosts[0].in_flight_memory_mib == 0


def test_placing_a_whole_class_at_once_spreads_it_without_writing(make_host: HostMaker) -> None:
    make_host("small", 16, 8)
    make_host("large", 48, 16)
    desktops = list(
        Desktop.objects.filter(
            pk__in=[make_desktop(status=S.CREATING).pk for _ in range(8)]
        ).select_related("hardware")
    )
    placed = hypervisors_place_many(desktops=desktops)
    assert Counter(str(host) for host in placed.values()) == {"small": 2, "large": 6}
    assert not PlacementCharge.objects.exists()


def test_a_class_gets_its_desktops_spread_and_starts_them_spread(
    make_host: HostMaker, run: Any, base_template: Any
) -> None:
    from accounts.choices import CourseRole
    from accounts.tests.factories import MembershipFactory

    make_host("a", 16, 8)
    make_host("b", 16, 8)
    course = CourseFactory.create()
    teacher = UserFactory.create(role=Role.TEACHER)
    MembershipFactory.create(course=course, user=teacher, role=CourseRole.TEACHER)
    students = [MembershipFactory.create(course=course).user for _ in range(6)]
    desktops = run(
        desktops_create_bulk,
        actor=teacher,
        template=base_template,
        owners=students,
        name="Lab",
        course=course,
    )
    defined = Counter(Desktop.objects.values_list("hypervisor__name", flat=True))
    assert defined == {"a": 3, "b": 3}

    # Started in the same second, before any stats sample: the charges spread them.
    for desktop, student in zip(desktops, students, strict=True):
        desktop.refresh_from_db()
        run(desktop_start, actor=student, desktop=desktop)
    started = Counter(Desktop.objects.values_list("hypervisor__name", "status"))
    assert started == {("a", S.STARTED): 3, ("b", S.STARTED): 3}
    for desktop in Desktop.objects.select_related("hypervisor"):
        assert desktop.hypervisor is not None
        state = libvirt_driver.domain_state(desktop.hypervisor.uri, desktop.domain_name)
        assert state == libvirt_driver.DomainState.RUNNING


def test_a_start_with_no_host_that_fits_fails_with_the_reason(
    make_host: HostMaker, run: Any, base_template: Any
) -> None:

    host = make_host("a", 16, 8)
    student = UserFactory.create()
    desktop = run(desktop_create, actor=student, template=base_template, name="d")
    Hypervisor.objects.filter(pk=host.pk).update(mode=HypervisorMode.MAINTENANCE)
    desktop.refresh_from_db()
    run(desktop_start, actor=student, desktop=desktop)
    desktop.refresh_from_db()
    assert desktop.status == S.FAILED
    assert desktop.status_reason == (
        "No hypervisor accepts new desktops now: ask an administrator to check the "
        "hypervisors page (no hypervisor with 256 MiB and 1 vCPU free in pool “desktops”: "
        "host a is in maintenance)."
    )


# --- monitoring ----------------------------------------------------------------------------------


def test_a_silent_host_goes_offline_after_the_grace_and_its_desktops_become_unknown(
    make_host: HostMaker, settings: Any
) -> None:
    settings.ISARD_HYPERVISOR_OFFLINE_GRACE_SECONDS = 30
    host = make_host("a", 32, 8)
    make_host("b", 8, 4)
    running = make_desktop(host=host)
    stopped = make_desktop(host=host, status=S.STOPPED)
    Hypervisor.objects.filter(pk=host.pk).update(uri=UNREACHABLE_URI)
    start = timezone.now()

    hypervisors_monitor(now=start)
    host.refresh_from_db()
    running.refresh_from_db()
    assert host.state == HypervisorState.ONLINE  # within the grace...
    assert "cannot connect" in host.last_error
    assert running.status == S.STARTED
    assert place(make_desktop(status=S.STARTING)).name == "b"  # ...but nothing goes there

    hypervisors_monitor(now=start + timedelta(seconds=31))
    host.refresh_from_db()
    running.refresh_from_db()
    stopped.refresh_from_db()
    assert host.state == HypervisorState.OFFLINE
    assert running.status == S.UNKNOWN
    assert "has not answered for 31 s" in running.status_reason
    assert stopped.status == S.STOPPED
    assert DesktopEvent.objects.filter(desktop=running, to_status=S.UNKNOWN).exists()
    assert HypervisorEvent.objects.filter(hypervisor=host, message__startswith="offline").exists()


def test_a_host_that_answers_again_gets_its_desktops_statuses_from_what_it_runs(
    make_host: HostMaker, settings: Any
) -> None:
    settings.ISARD_HYPERVISOR_OFFLINE_GRACE_SECONDS = 0
    host = make_host("a", 32, 8)
    still_running = make_desktop(host=host, run_domain=True)
    powered_off = make_desktop(host=host, run_domain=True)
    libvirt_driver.destroy_domain(host.uri, powered_off.domain_name)
    vanished = make_desktop(host=host)
    good_uri = host.uri
    Hypervisor.objects.filter(pk=host.pk).update(uri=UNREACHABLE_URI)

    reconcile_all_hypervisors()
    assert set(Desktop.objects.values_list("status", flat=True)) == {S.UNKNOWN}

    Hypervisor.objects.filter(pk=host.pk).update(uri=good_uri)
    reconcile_all_hypervisors()
    host.refresh_from_db()
    assert host.state == HypervisorState.ONLINE and host.unreachable_since is None
    statuses = dict(Desktop.objects.values_list("pk", "status"))
    assert statuses == {
        still_running.pk: S.STARTED,
        powered_off.pk: S.STOPPED,
        vanished.pk: S.FAILED,
    }
    assert HypervisorEvent.objects.filter(hypervisor=host, message__startswith="answers").exists()


# --- drain ---------------------------------------------------------------------------------------


def test_a_drain_live_migrates_what_shared_storage_allows_and_shuts_down_the_rest(
    make_host: HostMaker,
    run: Any,
    admin: Any,
    fake_migration: list[tuple[str, str, str]],
    pools: dict[str, StoragePool],
    shared_pool: StoragePool,
) -> None:
    draining = make_host("draining", 32, 8)
    other = make_host("other", 32, 8)
    movable = [make_desktop(host=draining, pool=shared_pool, run_domain=True) for _ in range(2)]
    local = make_desktop(host=draining, pool=pools["base"], run_domain=True)

    run(
        hypervisor_drain,
        actor=admin,
        hypervisor=draining,
        policy=DrainPolicy.MIGRATE_OR_STOP,
    )

    draining.refresh_from_db()
    assert draining.mode == HypervisorMode.MAINTENANCE
    assert draining.drain_total == 3
    for desktop in movable:
        desktop.refresh_from_db()
        assert (desktop.hypervisor, desktop.status) == (other, S.STARTED)
        assert libvirt_driver.domain_state(other.uri, desktop.domain_name) == "running"
        assert libvirt_driver.domain_state(draining.uri, desktop.domain_name) == "missing"
    local.refresh_from_db()
    assert local.status == S.SHUTTING_DOWN  # not on shared storage: it cannot migrate
    progress = drain_progress(draining)
    assert progress is not None
    assert (progress.remaining, progress.migrated, progress.stopped) == (1, 2, 1)
    assert not progress.finished
    assert "desktops.tasks.drain_hypervisor" in [name for name, _args in run.delayed]

    # The guest powers off; the reconciler sees it; the drain's next look finishes it.
    run(libvirt_driver.destroy_domain, draining.uri, local.domain_name)
    reconcile_all_hypervisors()
    run.run_delayed()
    draining.refresh_from_db()
    assert draining.drain_finished_at is not None
    assert str(drain_progress(draining)).startswith("finished: 2 migrated, 1 shut down")
    assert (
        DesktopMove.objects.filter(kind=MoveKind.LIVE_MIGRATION, status=MoveStatus.DONE).count()
        == 2
    )


def test_a_drain_that_may_only_migrate_leaves_what_cannot_move_running(
    make_host: HostMaker,
    run: Any,
    admin: Any,
    fake_migration: list[tuple[str, str, str]],
    shared_pool: StoragePool,
) -> None:
    draining = make_host("draining", 32, 8)
    make_host("tiny", 2, 2)  # room for one desktop only
    desktops = [make_desktop(host=draining, pool=shared_pool, run_domain=True) for _ in range(2)]
    run(hypervisor_drain, actor=admin, hypervisor=draining, policy=DrainPolicy.MIGRATE)
    rows = Desktop.objects.filter(pk__in=[desktop.pk for desktop in desktops])
    statuses = Counter(rows.values_list("hypervisor__name", "status"))
    assert statuses == {("tiny", S.STARTED): 1, ("draining", S.STARTED): 1}
    progress = drain_progress(draining)
    assert progress is not None and (progress.remaining, progress.migrated) == (1, 1)


def test_only_administrators_drain_a_host(make_host: HostMaker) -> None:
    host = make_host("a", 8, 4)
    with pytest.raises(PermissionDeniedError):
        hypervisor_drain(actor=UserFactory.create(role=Role.TEACHER), hypervisor=host)
    host.refresh_from_db()
    assert host.mode == HypervisorMode.ENABLED


def test_enabling_a_draining_host_ends_the_drain(
    make_host: HostMaker, admin: Any, run: Any
) -> None:
    host = make_host("a", 8, 4)
    make_desktop(host=host, status=S.STARTED, run_domain=True)
    run(hypervisor_drain, actor=admin, hypervisor=host, policy=DrainPolicy.MIGRATE)
    hypervisor_enable(actor=admin, hypervisor=host)
    host.refresh_from_db()
    assert host.mode == HypervisorMode.ENABLED and host.drain_finished_at is not None
    assert hypervisor_drain_step(hypervisor_id=host.pk).skipped == NO_DRAIN


# --- rebalancing ---------------------------------------------------------------------------------


@pytest.fixture
def unbalanced(
    make_host: HostMaker, shared_pool: StoragePool
) -> Iterator[tuple[Hypervisor, Hypervisor]]:
    """Host a runs six 2 GiB desktops, host b none (as their last samples saw)."""
    a = make_host("a", 16, 8)
    b = make_host("b", 16, 8)
    for _ in range(6):
        make_desktop(host=a, pool=shared_pool, run_domain=True)
    hypervisor_refresh(hypervisor=a)
    hypervisor_refresh(hypervisor=b)
    yield a, b


def test_rebalancing_moves_a_bounded_number_of_desktops_to_the_idle_host(
    unbalanced: tuple[Hypervisor, Hypervisor], fake_migration: list[tuple[str, str, str]]
) -> None:
    result = hypervisors_rebalance(max_moves=2, threshold=0.1)
    assert (result.planned, result.migrated, result.failed) == (2, 2, 0)
    assert result.spread_after < result.spread_before
    assert Counter(Desktop.objects.values_list("hypervisor__name", flat=True)) == {"a": 4, "b": 2}
    assert len(fake_migration) == 2

    # Next run finishes the job: three each, and then nothing more to do.
    assert hypervisors_rebalance(max_moves=2, threshold=0.1).migrated == 1
    assert Counter(Desktop.objects.values_list("hypervisor__name", flat=True)) == {"a": 3, "b": 3}
    assert hypervisors_rebalance(max_moves=2, threshold=0.1).planned == 0


def test_two_rebalancers_never_run_at_once(
    unbalanced: tuple[Hypervisor, Hypervisor], fake_migration: list[tuple[str, str, str]]
) -> None:
    with fleet_lock("moves", timeout=30, wait=0):
        result = hypervisors_rebalance(max_moves=2, threshold=0.1)
        with pytest.raises(LockUnavailableError), fleet_lock("moves", timeout=30, wait=0):
            pass
    assert result.skipped and "held by another worker" in result.skipped
    assert fake_migration == []
    assert hypervisors_rebalance(max_moves=2, threshold=0.1).migrated == 2


def test_a_drain_waits_while_a_rebalancing_run_moves_desktops_then_finishes(
    unbalanced: tuple[Hypervisor, Hypervisor],
    fake_migration: list[tuple[str, str, str]],
    run: Any,
    admin: Any,
) -> None:
    a, b = unbalanced
    with fleet_lock("moves", timeout=30, wait=0):  # a rebalancing run holds the moves lock
        run(hypervisor_drain, actor=admin, hypervisor=a, policy=DrainPolicy.MIGRATE)
    assert fake_migration == []
    assert [name for name, _args in run.delayed] == ["desktops.tasks.drain_hypervisor"]

    run.run_delayed()  # the drain looks again once the rebalancer is done
    assert len(fake_migration) == 6
    a.refresh_from_db()
    progress = drain_progress(a)
    assert progress is not None and progress.finished
    assert (progress.migrated, progress.remaining) == (6, 0)
    assert set(Desktop.objects.values_list("hypervisor", flat=True)) == {b.pk}


def test_a_desktop_on_local_storage_moves_at_its_next_start(
    make_host: HostMaker, pools: dict[str, StoragePool]
) -> None:
    a = make_host("a", 16, 8)
    b = make_host("b", 16, 8)
    local = [make_desktop(host=a, pool=pools["desktops"], run_domain=True) for _ in range(4)]
    hypervisor_refresh(hypervisor=a)

    result = hypervisors_rebalance(max_moves=1, threshold=0.1)
    assert (result.migrated, result.at_next_start) == (0, 1)
    move = DesktopMove.objects.get()
    assert (move.kind, move.status, move.target) == (MoveKind.AT_NEXT_START, MoveStatus.PENDING, b)
    desktop = next(d for d in local if d.pk == move.desktop_id)
    assert Desktop.objects.get(pk=desktop.pk).hypervisor == a  # still running where it was

    # It stops; its next start goes to the planned host even though the policy is spread.
    Desktop.objects.filter(pk=desktop.pk).update(status=S.STARTING)
    make_desktop(host=b)  # now b is the busier host
    assert place(desktop) == b
    move.refresh_from_db()
    assert move.status == MoveStatus.DONE


def test_a_failed_migration_leaves_the_guest_where_it_was(
    unbalanced: tuple[Hypervisor, Hypervisor], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise libvirt_driver.DriverError("migrate: Unsafe migration: the disks are not shared")

    monkeypatch.setattr(libvirt_driver, "migrate_domain", refuse)
    result = hypervisors_rebalance(max_moves=1, threshold=0.1)
    assert (result.migrated, result.failed) == (0, 1)
    assert set(Desktop.objects.values_list("hypervisor__name", "status")) == {("a", S.STARTED)}
    move = DesktopMove.objects.get()
    assert move.status == MoveStatus.FAILED and "Unsafe migration" in move.detail


def test_a_migration_given_up_that_finished_late_is_followed_by_its_desktop(
    unbalanced: tuple[Hypervisor, Hypervisor],
    fake_migration: list[tuple[str, str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The source answered after the call's time was up: the guest moved all the same."""
    a, b = unbalanced
    migrate = libvirt_driver.migrate_domain

    def finished_too_late(source_uri: str, target_uri: str, name: str, **options: Any) -> None:
        migrate(source_uri, target_uri, name, **options)
        raise libvirt_driver.HypervisorHungError(
            f"migrate {name}: the libvirt daemon at {source_uri} did not answer in 60 s"
        )

    monkeypatch.setattr(libvirt_driver, "migrate_domain", finished_too_late)
    result = hypervisors_rebalance(max_moves=1, threshold=0.1)
    assert (result.migrated, result.failed) == (0, 1)
    move = DesktopMove.objects.get()
    assert move.status == MoveStatus.FAILED
    desktop = Desktop.objects.get(pk=move.desktop_id)
    assert desktop.hypervisor == a  # what the platform believes, until it looks

    reconcile_all_hypervisors()
    desktop.refresh_from_db()
    assert (desktop.hypervisor, desktop.status) == (b, S.STARTED), desktop.status_reason
    assert DesktopEvent.objects.filter(
        desktop=desktop, reason="found running on b, not on a: placed there"
    ).exists()
    assert Counter(Desktop.objects.values_list("hypervisor__name", "status")) == {
        ("a", S.STARTED): 5,
        ("b", S.STARTED): 1,
    }
    # A second look changes nothing.
    reconcile_all_hypervisors()
    assert DesktopEvent.objects.filter(reason__startswith="found running on").count() == 1


def test_a_guest_running_on_two_hosts_is_left_for_an_administrator(
    unbalanced: tuple[Hypervisor, Hypervisor], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = unbalanced
    desktop = Desktop.objects.filter(hypervisor=a).first()
    assert desktop is not None
    libvirt_driver.define_domain(b.uri, libvirt_driver.domain_xml(a.uri, desktop.domain_name))
    libvirt_driver.start_domain(b.uri, desktop.domain_name)

    reconcile_all_hypervisors()
    desktop.refresh_from_db()
    assert (desktop.hypervisor, desktop.status) == (a, S.STARTED)
    assert f"{desktop.domain_name} runs on both b and a" in caplog.text


def test_a_stale_report_from_the_old_host_during_migration_is_repaired(
    unbalanced: tuple[Hypervisor, Hypervisor],
    fake_migration: list[tuple[str, str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = unbalanced
    desktop = Desktop.objects.filter(hypervisor=a).first()
    assert desktop is not None
    migrate = libvirt_driver.migrate_domain

    def migrate_while_the_listener_reports(*args: Any, **kwargs: Any) -> None:
        migrate(*args, **kwargs)
        # The old host's "stopped (migrated)" event arrives before the desktop's host moved.
        from desktops.services.reconciliation import desktop_sync_state

        stale = Desktop.objects.get(pk=desktop.pk)
        desktop_sync_state(desktop=stale, state=libvirt_driver.DomainState.MISSING, source="event")

    monkeypatch.setattr(libvirt_driver, "migrate_domain", migrate_while_the_listener_reports)
    move = desktop_live_migrate(desktop=desktop, target=b, reason=MoveReason.BALANCE)
    assert move.status == MoveStatus.DONE
    desktop.refresh_from_db()
    assert (desktop.hypervisor, desktop.status) == (b, S.STARTED)


ACTIONS = {"desktop_shutdown": desktop_shutdown, "desktop_stop": desktop_stop}


@pytest.mark.parametrize(
    ("action", "task"),
    [
        ("desktop_shutdown", "desktops.tasks.shutdown_desktop"),
        ("desktop_stop", "desktops.tasks.force_off_desktop"),
    ],
)
def test_a_shutdown_or_stop_asked_during_a_live_migration_happens_on_the_new_host(
    unbalanced: tuple[Hypervisor, Hypervisor],
    fake_migration: list[tuple[str, str, str]],
    monkeypatch: pytest.MonkeyPatch,
    routed: RoutedRunner,
    action: str,
    task: str,
) -> None:
    a, b = unbalanced
    Hypervisor.objects.filter(pk=a.pk).update(queue="hv.a")
    Hypervisor.objects.filter(pk=b.pk).update(queue="hv.b")
    desktop = Desktop.objects.select_related("owner").filter(hypervisor=a).first()
    assert desktop is not None
    migrate = libvirt_driver.migrate_domain

    def migrate_while_the_owner_acts(*args: Any, **kwargs: Any) -> None:
        # The owner clicks while the guest's memory is being copied to b.
        during = Desktop.objects.get(pk=desktop.pk)
        routed(ACTIONS[action], actor=desktop.owner, desktop=during)
        assert libvirt_driver.domain_state(a.uri, desktop.domain_name) == "running"
        migrate(*args, **kwargs)

    monkeypatch.setattr(libvirt_driver, "migrate_domain", migrate_while_the_owner_acts)
    move = desktop_live_migrate(desktop=desktop, target=b, reason=MoveReason.BALANCE)
    assert move.status == MoveStatus.DONE, move.detail
    desktop.refresh_from_db()
    assert desktop.hypervisor == b
    assert libvirt_driver.domain_state(b.uri, desktop.domain_name) == "running"
    # Sent to a's worker, the task found the migration running and is to run again later.
    assert (task, "hv.a") in routed.routed
    assert (task, "hv.b") in routed.routed  # sent again a bit later: now to b's worker
    name, arguments = routed.delayed.pop(0)
    assert name == task

    routed(app.tasks[name], **arguments)
    assert libvirt_driver.domain_state(b.uri, desktop.domain_name) == "shutoff"
    routed(reconcile_all_hypervisors)  # each host's worker reconciles its own desktops
    desktop.refresh_from_db()
    assert desktop.status == S.STOPPED


def test_a_migration_left_running_by_a_dead_worker_does_not_hold_a_shutdown_for_ever(
    unbalanced: tuple[Hypervisor, Hypervisor], routed: RoutedRunner, settings: Any
) -> None:

    settings.ISARD_MIGRATION_TIMEOUT_SECONDS = 300
    a, b = unbalanced
    desktop = Desktop.objects.select_related("owner").filter(hypervisor=a).first()
    assert desktop is not None
    move = DesktopMove.objects.create(
        desktop=desktop,
        source=a,
        target=b,
        kind=MoveKind.LIVE_MIGRATION,
        reason=MoveReason.BALANCE,
        status=MoveStatus.RUNNING,
    )
    DesktopMove.objects.filter(pk=move.pk).update(
        created_at=timezone.now() - timedelta(seconds=361)
    )
    routed(desktop_stop, actor=desktop.owner, desktop=desktop)
    desktop.refresh_from_db()
    assert desktop.status == S.STOPPED
    assert libvirt_driver.domain_state(a.uri, desktop.domain_name) == "shutoff"


def test_the_rebalance_task_does_nothing_when_switched_off(
    unbalanced: tuple[Hypervisor, Hypervisor],
    fake_migration: list[tuple[str, str, str]],
    settings: Any,
) -> None:
    settings.ISARD_REBALANCE_ENABLED = False
    assert rebalance_hypervisors()["skipped"]
    settings.ISARD_REBALANCE_ENABLED = True
    settings.ISARD_REBALANCE_THRESHOLD = 0.1
    settings.ISARD_REBALANCE_MAX_MOVES = 1
    assert rebalance_hypervisors()["migrated"] == 1


# --- the admin -----------------------------------------------------------------------------------


def test_the_admin_drains_a_host_and_shows_the_load_and_progress(
    make_host: HostMaker, admin: Any, django_capture_on_commit_callbacks: Any
) -> None:
    host = make_host("a", 8, 4)
    make_desktop(host=host, memory_mib=4 * GIB)
    client = Client()
    client.force_login(admin)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(
            "/admin/hypervisors/hypervisor/",
            {"action": "drain_migrate", "_selected_action": [host.pk]},
        )
    assert response.status_code == 302
    host.refresh_from_db()
    assert host.mode == HypervisorMode.MAINTENANCE and host.drain_policy == DrainPolicy.MIGRATE
    sent = [c.args[0].name for c in callbacks if isinstance(c, partial) and c.func is send_task]
    assert sent == ["desktops.tasks.drain_hypervisor"]

    page = client.get("/admin/hypervisors/hypervisor/").content.decode()
    assert "50%" in page  # 4 GiB of 8 booked
    assert "1 of 1 left" in page
    assert client.get(f"/admin/hypervisors/hypervisor/{host.pk}/change/").status_code == 200
    for model in ("placementrule", "desktopmove", "hypervisorevent"):
        assert client.get(f"/admin/hypervisors/{model}/").status_code == 200
