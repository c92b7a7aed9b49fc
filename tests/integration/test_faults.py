"""Faults injected into real components: what a person sees, and that nothing is lost.

Each scenario breaks something real that belongs to the test (a Redis server of its own
on its own port, a Celery worker process it started, a small file system it mounted, a
template's disk file) and undoes it in a `finally`. Nothing here stops a service other
agents or the machine use (the system libvirtd, the main PostgreSQL or Redis).

What isard promises (README, "When things go wrong"):
- a request never hangs on a dead or hung Redis: it answers 503 "the task queue is
  unreachable", and the desktop is put back (a start: back to stopped; a new desktop:
  removed again, it held nothing yet);
- a full storage pool fails the creation with the reason and leaves no overlay file and
  no domain; a class gets the desktops that fit, the others fail with the reason;
- a start whose disk or template disk is missing is refused at once, and the admin's
  health page names the missing files;
- a desktop whose worker was killed mid-provisioning does not stay "creating": the
  recovery fails it and removes its half-made disk and domain.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from django.utils import timezone

from accounts.tests.factories import MembershipFactory, UserFactory
from desktops.choices import DesktopStatus
from desktops.models import Deployment, Desktop
from desktops.services.deployments import deployment_start
from desktops.services.lifecycle import desktop_start, desktop_stop
from desktops.services.provisioning import desktop_create, desktops_create_bulk
from isard.core.errors import TaskQueueUnavailableError
from tests.campus import Campus, client_for
from tests.celery_broker import celery_broker
from tests.integration.conftest import wait_for

S = DesktopStatus

pytestmark = [pytest.mark.integration]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- 1. Redis, the task queue, goes away -------------------------------------------------


@dataclass
class OwnRedis:
    """A redis-server of the test's own, on a port of its own: safe to kill or freeze."""

    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.directory)),
            ],
            stdout=subprocess.DEVNULL,
        )

        def answers() -> bool:
            try:
                return bool(redis.Redis.from_url(self.url, socket_timeout=1).ping())
            except redis.RedisError:
                return False

        wait_for(answers, 10, "the test's redis-server")

    def kill(self) -> None:
        """SIGKILL: the port is closed at once, as when Redis crashed."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
            self.process.wait(timeout=10)

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing answers (a hung Redis)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(directory=tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def queue_on_own_redis(own_redis: OwnRedis, settings: Any) -> Iterator[OwnRedis]:
    """Point the Celery app (broker) and the cache (rate limits) at the test's Redis."""
    settings.CACHES = {
        "default": {**settings.CACHES["default"], "LOCATION": own_redis.url},
    }
    with celery_broker(own_redis.url):
        try:
            yield own_redis
        finally:
            own_redis.thaw()


def _a_stopped_desktop(run: Any, base_template: Any) -> tuple[Any, Any]:
    """A person's new desktop from the shared template, created and stopped."""
    owner = UserFactory.create()
    base_template.shared_with_everyone = True
    base_template.save()
    desktop = run(desktop_create, actor=owner, template=base_template, name="mine")
    desktop.refresh_from_db()
    assert desktop.status == S.STOPPED, desktop.status_reason
    return owner, desktop


def _queued(server: OwnRedis, queue: str = "celery") -> list[str]:
    """The names of the task messages waiting in `queue` on the test's Redis."""
    import json

    client = redis.Redis.from_url(server.url)
    try:
        return [json.loads(raw)["headers"]["task"] for raw in client.lrange(queue, 0, -1)]
    finally:
        client.close()


@pytest.mark.django_db(transaction=True)
def test_a_start_sends_its_task_to_the_broker_when_redis_is_up(
    north: Campus, queue_on_own_redis: OwnRedis
) -> None:
    """The same path as the faults below, with Redis up: the start task reaches the queue."""
    response = client_for(north.student).post(f"/api/v1/desktops/{north.student_desktop.pk}/start/")
    assert response.status_code == 202, response.content
    assert _queued(queue_on_own_redis) == ["desktops.tasks.start_desktop"]
    north.student_desktop.refresh_from_db()
    assert north.student_desktop.status == S.STARTING


@pytest.mark.parametrize("fault", ["killed", "frozen"])
@pytest.mark.django_db(transaction=True)
def test_a_start_with_redis_down_answers_503_and_leaves_the_desktop_stopped(
    north: Campus, queue_on_own_redis: OwnRedis, fault: str
) -> None:
    desktop = north.student_desktop
    if fault == "killed":
        queue_on_own_redis.kill()
    else:
        queue_on_own_redis.freeze()
    response = client_for(north.student).post(f"/api/v1/desktops/{desktop.pk}/start/")
    assert response.status_code == 503, response.content
    assert "task queue is unreachable" in response.json()["message"]
    desktop.refresh_from_db()
    assert desktop.status == S.STOPPED
    assert "task queue is unreachable" in desktop.status_reason
    # The desktop can be started once Redis is back: nothing was left half-done.
    queue_on_own_redis.thaw()
    if fault == "killed":
        queue_on_own_redis.start()
    response = client_for(north.student).post(f"/api/v1/desktops/{desktop.pk}/start/")
    assert response.status_code == 202, response.content
    assert _queued(queue_on_own_redis)[-1] == "desktops.tasks.start_desktop"


@pytest.mark.django_db(transaction=True)
def test_the_dashboards_start_button_with_redis_down_says_why(
    north: Campus, queue_on_own_redis: OwnRedis
) -> None:
    from django.test import Client
    from django.urls import reverse

    desktop = north.student_desktop
    browser = Client()
    browser.force_login(north.student)
    queue_on_own_redis.kill()
    response = browser.post(
        reverse("desktop-action", args=[desktop.pk, "start"]),
        headers={"accept": "application/json"},
    )
    assert response.status_code == 503
    assert "task queue is unreachable" in response.json()["message"]
    desktop.refresh_from_db()
    assert desktop.status == S.STOPPED


@pytest.mark.django_db(transaction=True)
def test_a_shutdown_with_redis_down_leaves_the_desktop_started(
    north: Campus, queue_on_own_redis: OwnRedis
) -> None:
    desktop = north.student_desktop
    Desktop.objects.filter(pk=desktop.pk).update(status=S.STARTED)
    queue_on_own_redis.kill()
    response = client_for(north.student).post(f"/api/v1/desktops/{desktop.pk}/shutdown/")
    assert response.status_code == 503, response.content
    desktop.refresh_from_db()
    assert desktop.status == S.STARTED


@pytest.mark.django_db(transaction=True)
def test_a_class_started_with_redis_down_is_refused_at_once_and_stays_stopped(
    north: Campus, queue_on_own_redis: OwnRedis
) -> None:
    """The bulk path: after the first refusal the others are not tried one timeout each."""
    deployment = Deployment.objects.create(
        name="lab",
        course=north.course,
        template=north.teacher_template,
        owner=north.teacher,
    )
    students = [north.student] + [
        UserFactory.create(username=f"north-extra{index}", school=north.school)
        for index in range(3)
    ]
    desktops = []
    for student in students[1:]:
        MembershipFactory.create(course=north.course, user=student)
    for student in students:
        desktops.append(
            Desktop.objects.create(
                name="lab",
                owner=student,
                course=north.course,
                hardware=north.hardware,
                deployment=deployment,
                status=S.STOPPED,
            )
        )
    queue_on_own_redis.freeze()
    outcome = deployment_start(actor=north.teacher, deployment=deployment)
    assert outcome.changed == []
    assert len(outcome.refused) == len(desktops)
    assert all("task queue is unreachable" in reason for _, reason in outcome.refused)
    statuses = set(
        Desktop.objects.filter(pk__in=[d.pk for d in desktops]).values_list("status", flat=True)
    )
    assert statuses == {S.STOPPED}


@pytest.mark.django_db(transaction=True)
def test_creating_desktops_with_redis_down_creates_nothing_and_says_why(
    north: Campus, queue_on_own_redis: OwnRedis, base_template: Any
) -> None:
    """A new desktop held nothing yet (no disk, no domain): it is removed, and 503."""
    base_template.shared_with_everyone = True
    base_template.save()
    before = Desktop.objects.count()
    queue_on_own_redis.kill()
    with pytest.raises(TaskQueueUnavailableError):
        desktop_create(actor=north.student, template=base_template, name="mine")
    with pytest.raises(TaskQueueUnavailableError):
        desktops_create_bulk(
            actor=north.teacher,
            template=base_template,
            owners=[north.student],
            name="lab",
            course=north.course,
        )
    assert Desktop.objects.count() == before
    response = client_for(north.student).post(
        "/api/v1/desktops/", {"template": base_template.pk, "name": "mine"}, format="json"
    )
    assert response.status_code == 503, response.content
    assert "task queue is unreachable" in response.json()["message"]
    assert Desktop.objects.count() == before


def test_health_reports_redis_down_without_hanging(
    queue_on_own_redis: OwnRedis, settings: Any, db: None
) -> None:
    from isard.health import collect_health

    settings.REDIS_URL = queue_on_own_redis.url
    queue_on_own_redis.freeze()
    report = collect_health()
    assert report["status"] == "unhealthy"
    assert report["checks"]["redis"]["ok"] is False


# --- 3. the desktops' storage pool is full ----------------------------------------------


@pytest.fixture
def small_desktops_pool(pools: dict[str, Any]) -> Iterator[Path]:
    """A tmpfs of 700 KiB mounted over the desktops pool: room for three overlays (root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a file system needs root (CI runs as root)")
    directory = Path(pools["desktops"].path)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=700k,mode=0755", "isard-test-full", str(directory)],
        check=True,
    )
    try:
        yield directory
    finally:
        subprocess.run(["umount", "--lazy", str(directory)], check=True)


def _fill(directory: Path) -> None:
    """Write until the file system says it is full."""
    descriptor = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(descriptor, b"\1" * 4096)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _domain_defined(desktop: Desktop, uri: str = "test:///default") -> bool:
    from hypervisors.drivers import libvirt_driver

    state = libvirt_driver.domain_state(uri, desktop.domain_name)
    return bool(state != libvirt_driver.DomainState.MISSING)


@pytest.mark.django_db
def test_a_desktop_created_on_a_full_pool_fails_with_the_reason_and_leaves_nothing(
    small_desktops_pool: Path, test_hypervisor: Any, base_template: Any, run: Any
) -> None:
    from accounts.choices import Role
    from hypervisors.models import Disk

    _fill(small_desktops_pool)
    disks_before = Disk.objects.count()
    owner = UserFactory.create(role=Role.ADMIN)
    desktop = run(desktop_create, actor=owner, template=base_template, name="full")
    desktop.refresh_from_db()
    assert desktop.status == S.FAILED
    assert "No space left on device" in desktop.status_reason, desktop.status_reason
    assert desktop.disk is None
    assert Disk.objects.count() == disks_before
    assert sorted(p.name for p in small_desktops_pool.iterdir()) == ["filler"]
    assert not _domain_defined(desktop)


@pytest.mark.django_db
def test_a_class_on_a_nearly_full_pool_gets_what_fits_and_each_other_desktop_says_why(
    small_desktops_pool: Path, test_hypervisor: Any, base_template: Any, run: Any
) -> None:
    """Decision: the desktops that fit are made; each of the others fails with the reason."""
    from accounts.choices import CourseRole, Role
    from accounts.tests.factories import CourseFactory

    course = CourseFactory.create()
    teacher = UserFactory.create(role=Role.TEACHER)
    MembershipFactory.create(course=course, user=teacher, role=CourseRole.TEACHER)
    students = [MembershipFactory.create(course=course).user for _ in range(6)]
    run(
        desktops_create_bulk,
        actor=teacher,
        template=base_template,
        owners=students,
        name="lab",
        course=course,
    )
    desktops = list(Desktop.objects.filter(course=course).select_related("disk"))
    made = [d for d in desktops if d.status == S.STOPPED]
    failed = [d for d in desktops if d.status == S.FAILED]
    assert len(made) + len(failed) == 6
    assert made and failed, [d.status_reason for d in desktops]
    for desktop in failed:
        assert "No space left on device" in desktop.status_reason, desktop.status_reason
        assert desktop.disk is None and desktop.hypervisor is None
        assert not _domain_defined(desktop)
    files = set(small_desktops_pool.iterdir())
    assert files == {Path(d.disk.path) for d in made if d.disk is not None}
    for desktop in made:
        assert _domain_defined(desktop)


# --- 4. a template's disk deleted behind isard's back -------------------------------------


@pytest.mark.django_db
def test_a_start_on_a_deleted_template_disk_is_refused_and_the_admin_health_names_it(
    test_hypervisor: Any, base_template: Any, run: Any, tmp_path: Path
) -> None:
    from isard.core.errors import ConflictError
    from isard.health import check_disks

    owner, desktop = _a_stopped_desktop(run, base_template)
    assert check_disks()["ok"] is True
    template_file = Path(base_template.disk.path)
    kept = tmp_path / "kept.qcow2"
    template_file.rename(kept)
    try:
        with pytest.raises(ConflictError, match="the disk or its template is missing"):
            run(desktop_start, actor=owner, desktop=desktop)
        desktop.refresh_from_db()
        assert desktop.status == S.STOPPED  # nothing changed, nothing lost
        assert Path(desktop.disk.path).exists()
        report = check_disks()
        assert report["ok"] is False
        assert report["missing_count"] == 1
        assert report["missing"][0].startswith(str(template_file))
    finally:
        kept.rename(template_file)
    # The admin puts the file back: the same desktop starts.
    run(desktop_start, actor=owner, desktop=desktop)
    desktop.refresh_from_db()
    assert desktop.status == S.STARTED, desktop.status_reason
    run(desktop_stop, actor=owner, desktop=desktop)


# --- 2. and 6. a libvirt daemon and a Celery worker of the test's own ---------------------


@pytest.fixture(scope="module")
def own_libvirtd() -> Iterator[Any]:
    """A per-user libvirt daemon (as in test_multihost): safe to kill, freeze and restart.

    Never the system libvirtd, which other tests and agents use.
    """
    if os.geteuid() != 0:
        pytest.skip("making the daemon's user needs root (CI runs as root)")
    from tests.integration.test_multihost import SessionDaemon

    daemon = SessionDaemon(
        "isard-hv-f", display_ports=(16100, 16199), migration_ports=(49400, 49449)
    )
    daemon.prepare()
    daemon.start()
    try:
        yield daemon
    finally:
        _signal_daemon(daemon, signal.SIGCONT)
        daemon.shut_down()


def _daemon_pid(daemon: Any) -> int:
    return int((daemon.runtime_dir / "libvirt" / "libvirtd.pid").read_text().strip())


def _signal_daemon(daemon: Any, signum: signal.Signals) -> None:
    try:
        os.kill(_daemon_pid(daemon), signum)
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass


@pytest.fixture
def host_on_own_libvirtd(own_libvirtd: Any, pools: dict[str, Any], storage_root: Path) -> Any:
    from hypervisors.choices import Accelerator, HypervisorState
    from hypervisors.tests.factories import HypervisorFactory

    logs = storage_root / "logs"
    logs.mkdir(exist_ok=True)
    logs.chmod(0o777)  # the daemon's qemu runs as its own user
    own_libvirtd.start()
    own_libvirtd.remove_guests()
    host = HypervisorFactory.create(
        name="faults",
        uri=own_libvirtd.uri,
        accelerator=Accelerator.QEMU,
        state=HypervisorState.ONLINE,
        free_memory_mib=4096,
        memory_mib=4096,
        cpus=2,
    )
    host.storage_pools.set(list(pools.values()))
    yield host
    own_libvirtd.start()
    own_libvirtd.remove_guests()


@pytest.mark.django_db
def test_libvirtd_killed_during_a_start_or_while_it_runs_then_back_statuses_follow(
    host_on_own_libvirtd: Any, own_libvirtd: Any, base_template: Any, run: Any, settings: Any
) -> None:
    from desktops.fleet.monitoring import hypervisors_monitor
    from desktops.tasks import reconcile_all_hypervisors
    from hypervisors.choices import HypervisorState
    from hypervisors.drivers import libvirt_driver

    settings.ISARD_HYPERVISOR_OFFLINE_GRACE_SECONDS = 0  # the start's failure: at once
    owner, desktop = _a_stopped_desktop(run, base_template)
    os.chmod(desktop.disk.path, 0o666)
    # The start is accepted, then the daemon dies before the worker's boot reaches it.
    with run.capture(execute=False) as callbacks:
        desktop_start(actor=owner, desktop=desktop)
    own_libvirtd.kill_libvirtd()
    try:
        run.process(callbacks)
        desktop.refresh_from_db()
        assert desktop.status == S.FAILED
        assert desktop.status_reason.startswith("Could not start on faults"), desktop.status_reason
        assert hypervisors_monitor()["faults"] == HypervisorState.OFFLINE
    finally:
        own_libvirtd.start()
    # The daemon is back: the host is online again, no half-made domain runs, and the
    # same desktop starts.
    assert hypervisors_monitor()["faults"] == HypervisorState.ONLINE
    state = libvirt_driver.domain_state(own_libvirtd.uri, desktop.domain_name)
    assert state != libvirt_driver.DomainState.RUNNING
    run(desktop_start, actor=owner, desktop=desktop)
    desktop.refresh_from_db()
    assert desktop.status == S.STARTED, desktop.status_reason

    # The daemon dies while the desktop runs: its guest's qemu goes on running.
    settings.ISARD_HYPERVISOR_OFFLINE_GRACE_SECONDS = 30
    own_libvirtd.kill_libvirtd()
    try:
        # Within the grace the host is not offline yet and the desktop keeps its status.
        assert hypervisors_monitor()["faults"] != HypervisorState.OFFLINE
        desktop.refresh_from_db()
        assert desktop.status == S.STARTED
        later = timezone.now() + timedelta(seconds=31)
        assert hypervisors_monitor(now=later)["faults"] == HypervisorState.OFFLINE
        desktop.refresh_from_db()
        assert desktop.status == S.UNKNOWN
        assert "has not answered" in desktop.status_reason
    finally:
        own_libvirtd.start()
    reconcile_all_hypervisors()  # back: the host is online and the guest still runs
    desktop.refresh_from_db()
    assert desktop.status == S.STARTED, desktop.status_reason
    run(desktop_stop, actor=owner, desktop=desktop)
    desktop.refresh_from_db()
    assert desktop.status == S.STOPPED


@pytest.mark.django_db
def test_libvirtd_frozen_a_start_fails_in_time_the_host_goes_offline_then_back_it_starts(
    host_on_own_libvirtd: Any, own_libvirtd: Any, base_template: Any, run: Any, settings: Any
) -> None:
    """SIGSTOP: the daemon's socket still accepts, nothing answers (a hung host).

    Before libvirt calls had a timeout, the start below blocked its worker for ever.
    """
    from desktops.fleet.monitoring import hypervisors_monitor
    from hypervisors.choices import HypervisorState
    from hypervisors.drivers import libvirt_driver

    settings.ISARD_LIBVIRT_CALL_TIMEOUT_SECONDS = 3
    settings.ISARD_HYPERVISOR_SAMPLE_TIMEOUT_SECONDS = 2
    settings.ISARD_HYPERVISOR_OFFLINE_GRACE_SECONDS = 30
    owner, desktop = _a_stopped_desktop(run, base_template)
    os.chmod(desktop.disk.path, 0o666)

    _signal_daemon(own_libvirtd, signal.SIGSTOP)
    try:
        began = time.monotonic()
        run(desktop_start, actor=owner, desktop=desktop)
        took = time.monotonic() - began
        desktop.refresh_from_db()
        assert desktop.status == S.FAILED
        assert desktop.status_reason.startswith("Could not start on faults: "), (
            desktop.status_reason
        )
        assert f"the libvirt daemon at {own_libvirtd.uri} did not answer in 3 s" in (
            desktop.status_reason
        )
        assert took < 3 + 5, f"the start took {took:.1f} s"

        # The monitor: silent within the grace, offline after it, without hanging.
        assert hypervisors_monitor()["faults"] != HypervisorState.OFFLINE
        later = timezone.now() + timedelta(seconds=31)
        assert hypervisors_monitor(now=later)["faults"] == HypervisorState.OFFLINE
        # Nothing more is placed there: the next start is refused at once.
        began = time.monotonic()
        run(desktop_start, actor=owner, desktop=desktop)
        desktop.refresh_from_db()
        assert desktop.status == S.FAILED
        assert "did not answer" not in desktop.status_reason, desktop.status_reason
        assert time.monotonic() - began < 3
    finally:
        _signal_daemon(own_libvirtd, signal.SIGCONT)

    # It answers again: the host is online (once the calls left waiting have finished),
    # and the same desktop starts.
    wait_for(
        lambda: hypervisors_monitor()["faults"] == HypervisorState.ONLINE,
        30,
        "the host to be online again",
    )
    run(desktop_start, actor=owner, desktop=desktop)
    desktop.refresh_from_db()
    assert desktop.status == S.STARTED, desktop.status_reason
    assert (
        libvirt_driver.domain_state(own_libvirtd.uri, desktop.domain_name)
        == libvirt_driver.DomainState.RUNNING
    )
    run(desktop_stop, actor=owner, desktop=desktop)
    desktop.refresh_from_db()
    assert desktop.status == S.STOPPED


@pytest.mark.django_db
def test_a_class_on_a_frozen_host_fails_fast_and_its_late_defines_are_removed_after_recreating(
    host_on_own_libvirtd: Any, own_libvirtd: Any, base_template: Any, run: Any, settings: Any
) -> None:
    """A teacher's class is provisioned while the host's libvirtd is frozen: the class is
    told within one call timeout, not one per desktop; the teacher recreates it once the
    host answers, and the defines that finished late are removed by the reconciliation
    after the grace, with an event row each, the new desktops' domains and disks kept."""
    from accounts.choices import Role
    from desktops.models import DesktopEvent
    from desktops.services.reconciliation import desktops_reconcile
    from desktops.services.recycle_bin import desktop_delete
    from hypervisors.drivers import libvirt_driver

    settings.ISARD_LIBVIRT_CALL_TIMEOUT_SECONDS = 3
    settings.ISARD_PROVISION_CONCURRENCY = 4
    settings.ISARD_ORPHAN_GRACE_SECONDS = 120
    admin = UserFactory.create(role=Role.ADMIN)
    students = [UserFactory.create() for _ in range(6)]
    _signal_daemon(own_libvirtd, signal.SIGSTOP)
    try:
        first = run(
            desktops_create_bulk, actor=admin, template=base_template, owners=students, name="Lab"
        )
    finally:
        _signal_daemon(own_libvirtd, signal.SIGCONT)
    for desktop in first:
        desktop.refresh_from_db()
    assert {desktop.status for desktop in first} == {S.FAILED}
    reasons = sorted(desktop.status_reason for desktop in first)
    # Four defines waited for the daemon; the rest of the class was told at once that the
    # host is not answering, instead of each waiting its own timeout.
    assert sum("did not answer in 3 s" in reason for reason in reasons) == 4, reasons
    assert sum("is not answering (4 calls have waited" in reason for reason in reasons) == 2

    # The defines that reached the daemon before it froze happen now that it answers:
    # domains for desktops that failed.
    names = {desktop.domain_name for desktop in first}

    def late_domains() -> set[str]:
        try:
            return names & set(libvirt_driver.list_domain_states(own_libvirtd.uri))
        except libvirt_driver.HypervisorHungError:
            return set()  # the calls given up have not all come back yet

    late = wait_for(late_domains, 60, "a given-up define to finish on the thawed host")

    # The teacher recreates the class: the failed desktops go, new ones are made.
    for desktop in first:
        run(desktop_delete, actor=admin, desktop=Desktop.objects.get(pk=desktop.pk))
    second = run(
        desktops_create_bulk, actor=admin, template=base_template, owners=students, name="Lab"
    )
    for desktop in second:
        desktop.refresh_from_db()
        assert desktop.status == S.STOPPED, desktop.status_reason

    host = host_on_own_libvirtd
    desktops_reconcile(hypervisor=host)  # seen, within the grace: nothing goes yet
    assert late_domains() == late
    desktops_reconcile(hypervisor=host, now=timezone.now() + timedelta(seconds=121))
    left = set(libvirt_driver.list_domain_states(own_libvirtd.uri))
    assert not late & left
    assert {desktop.domain_name for desktop in second} <= left
    for desktop in second:
        assert desktop.disk is not None and Path(desktop.disk.path).exists()
    removed = DesktopEvent.objects.filter(reason__startswith="removed the domain")
    assert removed.count() == len(late)
    assert all("its desktop is in the recycle bin" in event.reason for event in removed)


_WORKER_SETUP = """
import os, sys
import django
django.setup()
from pathlib import Path
from accounts.choices import Role
from accounts.tests.factories import UserFactory
from hypervisors.choices import Accelerator, HypervisorState
from hypervisors.models import Hypervisor
from hypervisors.services.pools import storage_pools_ensure
from templates_app.services.templates import template_register_base
from templates_app.tests.factories import HardwareProfileFactory
pools = storage_pools_ensure(root=Path(os.environ["ISARD_STORAGE_ROOT"]))
host = Hypervisor.objects.create(
    name="faults", uri=sys.argv[1], accelerator=Accelerator.QEMU,
    state=HypervisorState.ONLINE, memory_mib=4096, free_memory_mib=4096, cpus=2,
)
host.storage_pools.set(list(pools.values()))
template_register_base(
    name="Base", image=Path(sys.argv[2]), hardware=HardwareProfileFactory.create(networks=[])
)
UserFactory.create(username="owner", role=Role.ADMIN)
"""

_WORKER_CREATE = """
import django
django.setup()
from accounts.models import User
from desktops.services.provisioning import desktop_create
from templates_app.models import Template
desktop = desktop_create(
    actor=User.objects.get(username="owner"), template=Template.objects.get(), name="victim"
)
print(desktop.pk)
"""

_WORKER_RECOVER = """
from datetime import timedelta
import django
django.setup()
from django.utils import timezone
from desktops.services.reconciliation import desktops_recover_stuck
print(desktops_recover_stuck(now=timezone.now() + timedelta(minutes=10)))
"""


_WORKER_DELETE = """
import sys
import django
django.setup()
from desktops.models import Desktop
from desktops.services.recycle_bin import desktop_delete, desktop_recycle
desktop = Desktop.objects.get(pk=int(sys.argv[1]))
desktop_delete(actor=desktop.owner, desktop=desktop)
print(desktop_recycle(desktop_id=desktop.pk).status)
"""


def test_a_worker_killed_mid_provisioning_leaves_no_stuck_desktop_disk_or_domain(
    own_libvirtd: Any, own_redis: OwnRedis, tmp_path: Path
) -> None:
    """kill -9 a real Celery worker while its provisioning waits on a frozen libvirtd.

    The worker and the test share a SQLite file (the test's own database is in memory);
    the steps run as scripts against it, the checks read it directly.
    """
    import sqlite3
    import sys

    from hypervisors.drivers import libvirt_driver

    root = Path(__file__).resolve().parents[2]
    storage = Path(tempfile.mkdtemp(dir="/var/tmp/isard-tests"))
    storage.chmod(0o755)
    database = tmp_path / "isard.sqlite3"
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{database}",
        "REDIS_URL": own_redis.url,
        "ISARD_STORAGE_ROOT": str(storage),
        "DJANGO_SETTINGS_MODULE": "isard.settings",
        "PYTHONPATH": str(root),
    }

    def script(code: str, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", code, *args],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.strip()

    def row(sql: str, *params: Any) -> Any:
        with sqlite3.connect(database) as connection:
            return connection.execute(sql, params).fetchone()

    own_libvirtd.start()
    own_libvirtd.remove_guests()
    worker: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "-v0"], cwd=root, env=env, check=True
        )
        base = tmp_path / "base.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
        script(_WORKER_SETUP, own_libvirtd.uri, str(base))
        _signal_daemon(own_libvirtd, signal.SIGSTOP)  # libvirt now hangs, as a stuck host
        desktop_id = int(script(_WORKER_CREATE))
        worker = subprocess.Popen(
            [
                *(sys.executable, "-m", "celery", "-A", "isard", "worker", "--pool=prefork"),
                *("--concurrency=1", "--loglevel=WARNING", "--hostname=faults@%h"),
                *("--without-mingle", "--without-gossip"),
            ],
            cwd=root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

        def disk_linked() -> Any:
            found = row("SELECT disk_id FROM desktops_desktop WHERE id = ?", desktop_id)
            return found and found[0]

        disk_id = wait_for(disk_linked, 90, "the worker to record the overlay")
        (overlay,) = row("SELECT path FROM hypervisors_disk WHERE id = ?", disk_id)
        # The row and link come first, then the file (qemu-img): wait for it as well.
        wait_for(lambda: Path(overlay).exists(), 30, "the worker to make the overlay")
        os.killpg(worker.pid, signal.SIGKILL)  # mid-task: define_domain waits on libvirt
        worker.wait(timeout=10)
        assert row("SELECT status FROM desktops_desktop WHERE id = ?", desktop_id) == (S.CREATING,)

        # The sweep runs while the host is still frozen: it must not hang on it.
        assert script(_WORKER_RECOVER) == "1"
        status, reason, linked, host = row(
            "SELECT status, status_reason, disk_id, hypervisor_id FROM desktops_desktop"
            " WHERE id = ?",
            desktop_id,
        )
        assert status == S.FAILED
        assert "did not finish" in reason
        assert linked is None
        assert row("SELECT COUNT(*) FROM hypervisors_disk WHERE id = ?", disk_id) == (0,)
        assert not Path(overlay).exists()
        # The domain may have been defined there: the desktop keeps its host, so that
        # deleting it removes the domain once the host answers again.
        assert host is not None
        _signal_daemon(own_libvirtd, signal.SIGCONT)
        assert script(_WORKER_DELETE, str(desktop_id)) == S.DELETED
        (uuid,) = row("SELECT uuid FROM desktops_desktop WHERE id = ?", desktop_id)
        name = f"{libvirt_driver.DOMAIN_PREFIX}{uuid}"
        assert name not in libvirt_driver.list_domain_states(own_libvirtd.uri)
    finally:
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)
        _signal_daemon(own_libvirtd, signal.SIGCONT)
        own_libvirtd.remove_guests()
        shutil.rmtree(storage, ignore_errors=True)


# --- 5. PostgreSQL unreachable, then restarted, while the worker runs tasks ---------------

PG_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass
class OwnPostgres:
    """A PostgreSQL cluster of the test's own on a loopback port (never the machine's)."""

    directory: Path
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"postgres://isard@127.0.0.1:{self.port}/isard"

    def _pg(self, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *args],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=60,
        )

    def create(self) -> None:
        subprocess.run(["chown", "postgres:postgres", str(self.directory)], check=True)
        self.directory.chmod(0o700)
        self._pg(str(PG_BIN / "initdb"), "-D", str(self.directory / "data"), "-A", "trust")
        self.start()
        self._pg(str(PG_BIN / "createuser"), "-h", "127.0.0.1", "-p", str(self.port), "-s", "isard")
        self._pg(str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "isard")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        data, log = str(self.directory / "data"), str(self.directory / "log")
        self._pg(str(PG_BIN / "pg_ctl"), "-D", data, "-o", options, "-w", "-l", log, "start")

    def stop(self) -> None:
        data = str(self.directory / "data")
        self._pg(str(PG_BIN / "pg_ctl"), "-D", data, "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        return (self.directory / "data" / "postmaster.pid").exists()


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    if os.geteuid() != 0 or not (PG_BIN / "initdb").exists():
        pytest.skip("a PostgreSQL cluster of the test's own needs root and PostgreSQL 15")
    cluster = OwnPostgres(directory=Path(tempfile.mkdtemp(prefix="isard-faults-pg.")))
    try:
        cluster.create()
        yield cluster
    finally:
        if cluster.running():
            cluster.stop()
        shutil.rmtree(cluster.directory, ignore_errors=True)


def test_provisioning_survives_postgresql_and_redis_restarted_under_a_real_worker(
    own_postgres: OwnPostgres, own_redis: OwnRedis, tmp_path: Path
) -> None:
    """The engine tasks retry on OperationalError: a database back within seconds loses
    nothing; a database or a Redis restarted under a running worker does not break its
    next task."""
    import sys

    import psycopg

    root = Path(__file__).resolve().parents[2]
    storage = Path(tempfile.mkdtemp(dir="/var/tmp/isard-tests"))
    storage.chmod(0o755)
    log = tmp_path / "worker.log"
    env = {
        **os.environ,
        "DATABASE_URL": own_postgres.url,
        "REDIS_URL": own_redis.url,
        "ISARD_STORAGE_ROOT": str(storage),
        "DJANGO_SETTINGS_MODULE": "isard.settings",
        "PYTHONPATH": str(root),
    }

    def script(code: str, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", code, *args],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.strip()

    def status(desktop_id: int) -> str | None:
        try:
            with psycopg.connect(own_postgres.url.replace("postgres://", "postgresql://")) as db:
                found = db.execute(
                    "SELECT status FROM desktops_desktop WHERE id = %s", (desktop_id,)
                ).fetchone()
        except psycopg.OperationalError:
            return None
        return str(found[0]) if found else None

    worker: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "-v0"], cwd=root, env=env, check=True
        )
        base = tmp_path / "base.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
        script(_WORKER_SETUP, "test:///default", str(base))
        first = int(script(_WORKER_CREATE))  # queued; no worker yet
        own_postgres.stop()
        with open(log, "wb") as output:
            worker = subprocess.Popen(
                [
                    *(sys.executable, "-m", "celery", "-A", "isard", "worker", "--pool=solo"),
                    *("--loglevel=INFO", "--hostname=faults-pg@%h"),
                    *("--without-mingle", "--without-gossip"),
                ],
                cwd=root,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(lambda: b"Retry in" in log.read_bytes(), 60, "the task to fail and retry")
        own_postgres.start()
        wait_for(lambda: status(first) == S.STOPPED, 60, "the retried provisioning")

        own_postgres.stop()  # a restart under the running worker and its old connection
        own_postgres.start()
        second = int(script(_WORKER_CREATE))
        wait_for(lambda: status(second) == S.STOPPED, 60, "provisioning after a restart")

        # Redis restarted under the running worker: it reconnects and takes the next task.
        own_redis.kill()
        own_redis.start()
        third = int(script(_WORKER_CREATE))
        wait_for(lambda: status(third) == S.STOPPED, 90, "provisioning after Redis restarted")
    finally:
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)
        shutil.rmtree(storage, ignore_errors=True)
