"""Two real, independent hypervisors on this machine: per-user `qemu:///session` daemons.

Each host is a libvirt daemon of its own Unix user, with its own host UUID (libvirt
refuses to migrate "to the same host" otherwise), reached by root through its socket. The
disks live in the test's storage root, which both reach at the same path: shared storage,
as NFS gives a real fleet. Real tiny guests boot under TCG on both.

The fixture makes the users, their configuration and their daemons itself (idempotent: a
second run reuses the users), and stops the daemons and every guest on them afterwards.
It needs root, as CI has.

One difference from a real fleet: the two daemons run qemu as two different users, where
real hosts run it as the same one, so the test makes each desktop's disk and the serial
log directory writable by both.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from accounts.choices import CourseRole, Role
from accounts.tests.factories import CourseFactory, MembershipFactory, UserFactory
from desktops.choices import DesktopStatus
from desktops.fleet.drain import hypervisor_drain
from desktops.fleet.monitoring import hypervisor_refresh
from desktops.fleet.moves import desktop_live_migrate
from desktops.fleet.placement import hypervisor_place
from desktops.fleet.selectors import drain_progress
from desktops.models import Desktop
from desktops.services.domains import serial_log_path
from desktops.services.lifecycle import desktop_shutdown, desktop_start
from desktops.services.provisioning import desktops_create_bulk
from desktops.tasks import reconcile_all_hypervisors
from hypervisors.choices import (
    AcceleratorSetting,
    DrainPolicy,
    HypervisorMode,
    HypervisorState,
    MoveKind,
    MoveReason,
    MoveStatus,
    PoolPurpose,
)
from hypervisors.drivers import libvirt_driver
from hypervisors.guest_image import parse_boot_count
from hypervisors.models import DesktopMove, Hypervisor
from hypervisors.services.accelerator import hypervisor_detect_accelerator
from hypervisors.services.hosts import hypervisor_register
from isard.core.errors import NoCapacityError
from tests.integration.conftest import wait_for

S = DesktopStatus
HOST_USERS = ("isard-hv-a", "isard-hv-b")
HOMES = Path("/var/lib/isard-test-hosts")


pytestmark = [
    pytest.mark.integration,
    pytest.mark.django_db,
    pytest.mark.skipif(os.geteuid() != 0, reason="making the hosts' users needs root"),
]


def _pid_in(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _running(pid_file: Path) -> bool:
    pid = _pid_in(pid_file)
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _signal(pid_file: Path, signum: signal.Signals) -> None:
    pid = _pid_in(pid_file)
    if pid is not None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _stop_process(pid_file: Path) -> None:
    """SIGTERM the process named by `pid_file` (a daemon this module started), then wait."""
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


@dataclass
class SessionDaemon:
    """One user's libvirt daemon: an independent hypervisor on this machine.

    Every libvirt daemon hands out VNC and SPICE ports from 5900 up and incoming
    migration ports from 49152 up, unaware of the others on the same machine: two daemons
    (or one and the system daemon) then give two guests the same port and the second
    fails with "Address already in use". So each test daemon gets ranges of its own, in
    its `qemu.conf`, away from the system daemon's.
    """

    user: str
    display_ports: tuple[int, int]
    migration_ports: tuple[int, int]

    @property
    def account(self) -> pwd.struct_passwd:
        return pwd.getpwnam(self.user)

    @property
    def runtime_dir(self) -> Path:
        return Path(f"/run/user/{self.account.pw_uid}")

    @property
    def uri(self) -> str:
        return f"qemu+unix:///session?socket={self.runtime_dir}/libvirt/libvirt-sock"

    def prepare(self) -> None:
        """The user, its runtime directory and a libvirtd.conf with its own host UUID."""
        try:
            pwd.getpwnam(self.user)
        except KeyError:
            HOMES.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--create-home",
                    "--home-dir",
                    str(HOMES / self.user),
                    "--shell",
                    "/usr/sbin/nologin",
                    self.user,
                ],
                check=True,
            )
        account = self.account
        home = Path(account.pw_dir)
        for directory in (self.runtime_dir, home / ".config" / "libvirt"):
            directory.mkdir(parents=True, exist_ok=True)
        config = home / ".config" / "libvirt" / "libvirtd.conf"
        host_uuid = uuid.uuid5(uuid.NAMESPACE_DNS, f"{self.user}.isard.invalid")
        changed = _write_if_changed(config, f'host_uuid = "{host_uuid}"\n')
        changed |= _write_if_changed(
            home / ".config" / "libvirt" / "qemu.conf",
            f"remote_display_port_min = {self.display_ports[0]}\n"
            f"remote_display_port_max = {self.display_ports[1]}\n"
            f"migration_port_min = {self.migration_ports[0]}\n"
            f"migration_port_max = {self.migration_ports[1]}\n",
        )
        if changed and self.answers():
            self.kill_libvirtd()  # a daemon left by an older run must read the new files
        subprocess.run(
            ["chown", "-R", f"{account.pw_uid}:{account.pw_gid}", str(home), str(self.runtime_dir)],
            check=True,
        )
        self.runtime_dir.chmod(0o700)

    def answers(self) -> bool:
        try:
            libvirt_driver.ping(self.uri)
        except libvirt_driver.DriverError:
            return False
        return True

    def start(self) -> None:
        if self.answers():
            return
        # A daemon may still run without answering (left frozen by a fault test, or still
        # exiting): wake it and give it a moment, else stop it, so that a new one can take
        # its pidfile ("Unable to obtain pidfile" otherwise).
        pid_file = self.runtime_dir / "libvirt" / "libvirtd.pid"
        if _running(pid_file):
            _signal(pid_file, signal.SIGCONT)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if self.answers():
                    return
                time.sleep(0.2)
            libvirt_driver.forget_connection(self.uri)
            _stop_process(pid_file)
        account = self.account
        subprocess.run(
            [
                "runuser",
                "-u",
                self.user,
                "--",
                "env",
                "-i",
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                f"HOME={account.pw_dir}",
                f"XDG_RUNTIME_DIR={self.runtime_dir}",
                "libvirtd",
                "--daemon",
            ],
            check=True,
        )
        deadline = time.monotonic() + 20
        while not self.answers():
            if time.monotonic() > deadline:
                pytest.fail(f"the libvirt daemon of {self.user} did not answer on {self.uri}")
            time.sleep(0.2)

    def kill_libvirtd(self) -> None:
        """Stop the daemon as a crash would: its running guests go on running."""
        libvirt_driver.forget_connection(self.uri)
        _stop_process(self.runtime_dir / "libvirt" / "libvirtd.pid")

    def shut_down(self) -> None:
        """Remove every guest, stop the daemon and its log daemon, leave no runtime files."""
        self.start()  # a test may have stopped it; its guests must still go
        self.remove_guests()
        self.kill_libvirtd()
        _stop_process(self.runtime_dir / "libvirt" / "virtlogd.pid")
        shutil.rmtree(self.runtime_dir, ignore_errors=True)

    def remove_guests(self) -> None:
        if not self.answers():
            return
        for name in libvirt_driver.list_domain_states(self.uri):
            libvirt_driver.undefine_domain(self.uri, name)


def _write_if_changed(path: Path, text: str) -> bool:
    if path.exists() and path.read_text() == text:
        return False
    path.write_text(text)
    return True


@pytest.fixture(scope="module")
def daemons() -> Iterator[tuple[SessionDaemon, SessionDaemon]]:
    pair = (
        SessionDaemon(HOST_USERS[0], display_ports=(15900, 15999), migration_ports=(49300, 49349)),
        SessionDaemon(HOST_USERS[1], display_ports=(16000, 16099), migration_ports=(49350, 49399)),
    )
    for daemon in pair:
        daemon.prepare()
        daemon.start()
    yield pair
    for daemon in pair:
        daemon.shut_down()


@pytest.fixture
def hosts(
    daemons: tuple[SessionDaemon, SessionDaemon],
    pools: dict[str, Any],
    storage_root: Path,
    settings: Any,
) -> Iterator[tuple[Hypervisor, Hypervisor]]:
    """Hosts a and b, registered, TCG, reaching the shared storage, sampled once."""
    settings.ISARD_LOCK_NAMESPACE = f"isard-test-{uuid.uuid4().hex}"
    desktops_pool = pools[PoolPurpose.DESKTOPS.value]
    desktops_pool.shared = True
    desktops_pool.save()
    logs = storage_root / "logs"
    logs.mkdir(exist_ok=True)
    logs.chmod(0o777)  # each daemon writes (and recreates) its guests' serial logs here
    made = []
    for name, daemon in zip(("a", "b"), daemons, strict=True):
        daemon.start()
        daemon.remove_guests()
        host = hypervisor_register(name=name, uri=daemon.uri)
        Hypervisor.objects.filter(pk=host.pk).update(
            accelerator_setting=AcceleratorSetting.QEMU, migration_address="127.0.0.1"
        )
        host.refresh_from_db()
        host = hypervisor_detect_accelerator(hypervisor=host, probe_image=Path("/"))
        made.append(hypervisor_refresh(hypervisor=host))
    # Both are this machine, sampled a few milliseconds apart: make the samples equal, so
    # what tells the hosts apart is what the balancer does, not other processes' memory.
    Hypervisor.objects.filter(pk__in=[host.pk for host in made]).update(
        free_memory_mib=min(host.free_memory_mib for host in made)
    )
    for host in made:
        host.refresh_from_db()
    yield made[0], made[1]
    for daemon in daemons:
        daemon.start()
        daemon.remove_guests()


@pytest.fixture
def template(tiny_image: Path, pools: dict[str, Any]) -> Any:
    from templates_app.demo import demo_hardware_profile
    from templates_app.services.templates import template_register_base

    return template_register_base(
        name="Tiny Linux (demo)", image=tiny_image, hardware=demo_hardware_profile()
    )


def make_class(run: Any, template: Any, size: int) -> tuple[Any, list[Desktop]]:
    """A course whose students each get a desktop; disks writable by both hosts' qemu."""
    course = CourseFactory.create()
    teacher = UserFactory.create(role=Role.TEACHER)
    MembershipFactory.create(course=course, user=teacher, role=CourseRole.TEACHER)
    students = [MembershipFactory.create(course=course).user for _ in range(size)]
    run(
        desktops_create_bulk,
        actor=teacher,
        template=template,
        owners=students,
        name="Lab",
        course=course,
    )
    desktops = list(Desktop.objects.filter(course=course).select_related("disk", "owner"))
    for desktop in desktops:
        assert desktop.status == S.STOPPED, desktop.status_reason
        assert desktop.disk is not None
        os.chmod(desktop.disk.path, 0o666)
    return course, desktops


def start(run: Any, desktop: Desktop) -> None:
    desktop.refresh_from_db()
    serial_log_path(desktop).unlink(missing_ok=True)
    run(desktop_start, actor=desktop.owner, desktop=desktop)
    desktop.refresh_from_db()
    assert desktop.status == S.STARTED, desktop.status_reason


def boot_count(desktop: Desktop, timeout: float = 240) -> int:
    log = serial_log_path(desktop)

    def booted() -> int | None:
        return parse_boot_count(log.read_text(errors="replace")) if log.exists() else None

    return int(wait_for(booted, timeout, f"{desktop.name} ({desktop.pk}) to boot"))


def running_on(host: Hypervisor, desktop: Desktop) -> bool:
    state = libvirt_driver.domain_state(host.uri, desktop.domain_name)
    return bool(state == libvirt_driver.DomainState.RUNNING)


def test_a_class_spreads_over_two_real_hosts_and_a_guest_moves_live_between_them(
    hosts: tuple[Hypervisor, Hypervisor],
    daemons: tuple[SessionDaemon, SessionDaemon],
    template: Any,
    run: Any,
) -> None:
    a, b = hosts
    _course, desktops = make_class(run, template, 4)

    # The whole class starts in the same second: the in-flight charges spread it.
    for desktop in desktops:
        start(run, desktop)
    placed = {desktop.pk: Desktop.objects.get(pk=desktop.pk).hypervisor for desktop in desktops}
    assert Counter(host.name for host in placed.values() if host) == {"a": 2, "b": 2}
    ranges = {"a": daemons[0].display_ports, "b": daemons[1].display_ports}
    for desktop in desktops:
        host = placed[desktop.pk]
        assert host is not None and running_on(host, desktop)
        assert boot_count(desktop) == 1
        # Each daemon gives its guests display ports from its own range: no collisions.
        ports = libvirt_driver.graphics_ports(host.uri, desktop.domain_name)
        low, high = ranges[host.name]
        assert ports.vnc_port is not None and low <= ports.vnc_port <= high
        assert ports.spice_port is not None and low <= ports.spice_port <= high

    # One running guest moves from a to b and keeps running there.
    moving = next(desktop for desktop in desktops if placed[desktop.pk] == a)
    move = desktop_live_migrate(desktop=moving, target=b, reason=MoveReason.BALANCE)
    assert move.status == MoveStatus.DONE, move.detail
    moving.refresh_from_db()
    assert (moving.hypervisor, moving.status) == (b, S.STARTED)
    assert running_on(b, moving)
    assert libvirt_driver.domain_state(a.uri, moving.domain_name) == "missing"
    reconcile_all_hypervisors()  # both hosts' views agree with the database
    moving.refresh_from_db()
    assert moving.status == S.STARTED

    # The guest that now runs on b is the same one: it answers the ACPI power button there,
    # and its next boot is its second (it never rebooted, and its disk came along).
    serial_log_path(moving).unlink(missing_ok=True)
    run(desktop_shutdown, actor=moving.owner, desktop=moving)

    def powered_off() -> bool:
        reconcile_all_hypervisors()
        moving.refresh_from_db()
        return bool(moving.status == S.STOPPED)

    wait_for(powered_off, 180, "the migrated guest to power off on b")
    start(run, moving)
    assert boot_count(moving) == 2

    # Drain a: its guests live-migrate to b; a hosts nothing and takes nothing new.
    on_a = Desktop.objects.filter(hypervisor=a, status=S.STARTED).count()
    assert on_a >= 1
    admin = UserFactory.create(role=Role.ADMIN)
    run(hypervisor_drain, actor=admin, hypervisor=a, policy=DrainPolicy.MIGRATE)
    a.refresh_from_db()
    progress = drain_progress(a)
    assert progress is not None and progress.finished, progress
    assert (progress.total, progress.migrated, progress.remaining) == (on_a, on_a, 0)
    assert a.mode == HypervisorMode.MAINTENANCE
    for desktop in Desktop.objects.filter(pk__in=[d.pk for d in desktops]):
        assert desktop.hypervisor == b and desktop.status == S.STARTED
        assert running_on(b, desktop)
    drained = DesktopMove.objects.filter(source=a, reason=MoveReason.DRAIN)
    assert {(m.kind, m.status) for m in drained} == {(MoveKind.LIVE_MIGRATION, MoveStatus.DONE)}
    with pytest.raises(NoCapacityError, match="host a is in maintenance"):
        hypervisor_place(memory_mib=32 * 1024 * 1024, vcpus=1, charge=False)


def test_a_host_whose_daemon_dies_goes_offline_and_its_desktops_come_back(
    hosts: tuple[Hypervisor, Hypervisor],
    daemons: tuple[SessionDaemon, SessionDaemon],
    template: Any,
    run: Any,
    settings: Any,
) -> None:
    settings.ISARD_HYPERVISOR_OFFLINE_GRACE_SECONDS = 0
    a, b = hosts
    _course, desktops = make_class(run, template, 2)
    for desktop in desktops:
        start(run, desktop)
    on_b = Desktop.objects.get(pk__in=[d.pk for d in desktops], hypervisor=b)

    daemons[1].kill_libvirtd()  # b's libvirt dies; its guest's qemu goes on running
    reconcile_all_hypervisors()
    b.refresh_from_db()
    on_b.refresh_from_db()
    assert b.state == HypervisorState.OFFLINE
    assert on_b.status == S.UNKNOWN
    assert "has not answered" in on_b.status_reason
    # Nothing is placed on b while it is gone.
    assert hypervisor_place(memory_mib=192, vcpus=1, charge=False) == a

    daemons[1].start()
    reconcile_all_hypervisors()
    b.refresh_from_db()
    on_b.refresh_from_db()
    assert b.state == HypervisorState.ONLINE
    assert on_b.status == S.STARTED  # the guest never stopped: reconciliation says so
    assert running_on(b, on_b)
