"""A Celery queue per hypervisor: which queue each task goes to, and a real worker on one.

The routing decision is each typed task call's queue, checked through Celery's own router,
the path every `send_task` takes. The last test starts a real worker that consumes one host's
queue only, on real Redis, and shows that it gets that host's task and nobody else's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command

from accounts import task_calls as account_task_calls
from accounts.choices import Role
from accounts.tests.factories import UserFactory
from desktops import task_calls
from desktops.choices import DesktopStatus
from desktops.models import Desktop
from desktops.services.lifecycle import desktop_start, desktop_stop
from desktops.services.provisioning import desktop_create, desktops_create_bulk
from desktops.tasks import reconcile_all_hypervisors, reconcile_hypervisor
from hypervisors import task_calls as hypervisor_task_calls
from hypervisors.drivers import libvirt_driver
from hypervisors.models import Hypervisor, HypervisorEvent, StoragePool
from hypervisors.routing import default_queue, hypervisor_queue
from hypervisors.services.hosts import host_check_local, hypervisor_add, hypervisor_check
from hypervisors.tests.conftest import HostMaker, RoutedRunner, celery_queue
from isard.core.errors import ApplicationError, InfrastructureError
from isard.core.tasks import send_task
from templates_app import task_calls as template_task_calls

pytestmark = pytest.mark.django_db

S = DesktopStatus


@pytest.fixture
def admin() -> Any:
    return UserFactory.create(role=Role.ADMIN)


# --- the routing decision ------------------------------------------------------------------------


def test_a_host_without_a_queue_of_its_own_is_served_by_the_default_queue(
    make_host: HostMaker,
) -> None:
    host = make_host("local", 16, 4)
    assert hypervisor_queue(host) == default_queue() == "celery"
    for call in (
        task_calls.shutdown_desktop(desktop_id=1, hypervisor=host),
        task_calls.force_off_desktop(desktop_id=1, hypervisor=host),
        task_calls.boot_desktop(desktop_id=1, hypervisor=host),
    ):
        assert celery_queue(call) == "celery", call.name


def test_every_task_on_a_placed_desktop_goes_to_its_hosts_queue(make_host: HostMaker) -> None:
    lab2 = make_host("lab2", 16, 4, queue="hv.lab2")
    for call in (
        task_calls.shutdown_desktop(desktop_id=1, hypervisor=lab2),
        task_calls.shutdown_timeout(desktop_id=1, hypervisor=lab2, countdown=60),
        task_calls.force_off_desktop(desktop_id=1, hypervisor=lab2),
        task_calls.delete_desktop(desktop_id=1, hypervisor=lab2),
        # Placed there by the central worker: the rest goes to the host.
        task_calls.boot_desktop(desktop_id=1, hypervisor=lab2),
        task_calls.provision_desktop(desktop_id=1, hypervisor=lab2),
        task_calls.provision_desktops(placed_on=[(1, lab2), (2, lab2)]),
        task_calls.reconcile_hypervisor(hypervisor=lab2, expires=30),
    ):
        assert celery_queue(call) == "hv.lab2", call.name
    # Sent again a bit later (a countdown) or retried, it keeps its queue.
    later = task_calls.force_off_desktop(desktop_id=1, hypervisor=lab2, countdown=2)
    assert (celery_queue(later), later.options["countdown"]) == ("hv.lab2", 2)


def test_placement_and_fleet_work_stay_on_the_default_queue(make_host: HostMaker) -> None:
    make_host("lab2", 16, 4, queue="hv.lab2")
    for call in (
        task_calls.start_desktop(desktop_id=1),
        task_calls.create_desktop(desktop_id=1),
        task_calls.create_desktops(desktop_ids=[1, 2]),
        task_calls.drain_hypervisor(hypervisor_id=1, actor_id=None),
        task_calls.make_template(template_id=1, desktop_id=1),
    ):
        assert celery_queue(call) == "celery", call.name


def test_a_desktop_on_no_host_goes_to_the_default_queue_and_one_call_has_one_queue(
    make_host: HostMaker,
) -> None:
    assert celery_queue(task_calls.delete_desktop(desktop_id=1, hypervisor=None)) == "celery"
    local = make_host("local", 16, 4)
    lab2 = make_host("lab2", 16, 4, queue="hv.lab2")
    with pytest.raises(ValueError, match="one queue per call"):
        task_calls.provision_desktops(placed_on=[(1, local), (2, lab2)])


def test_every_task_name_is_a_registered_task_and_every_task_has_a_name_there() -> None:
    from isard.celery import app

    app.loader.import_default_modules()
    named = {
        value
        for module in (task_calls, hypervisor_task_calls, template_task_calls, account_task_calls)
        for key, value in vars(module).items()
        if key.isupper() and isinstance(value, str)
    }
    ours = {
        name
        for name in app.tasks
        if name.split(".")[0] in {"desktops", "hypervisors", "templates_app", "accounts"}
    }
    assert named == ours


# --- starts and classes handed to the host's worker ----------------------------------------------


def _profile() -> Any:
    from templates_app.tests.factories import HardwareProfileFactory

    return HardwareProfileFactory.create(networks=[])


def test_a_desktop_is_placed_centrally_then_made_and_started_by_its_hosts_worker(
    make_host: HostMaker, routed: RoutedRunner, base_template: Any
) -> None:
    lab2 = make_host("lab2", 16, 4, queue="hv.lab2")
    student = UserFactory.create()
    desktop = routed(desktop_create, actor=student, template=base_template, name="d")
    desktop.refresh_from_db()
    assert (desktop.status, desktop.hypervisor) == (S.STOPPED, lab2), desktop.status_reason
    assert routed.routed == [
        ("desktops.tasks.create_desktop", "celery"),
        ("desktops.tasks.provision_desktop", "hv.lab2"),
    ]

    routed.routed.clear()
    routed(desktop_start, actor=student, desktop=desktop)
    desktop.refresh_from_db()
    assert (desktop.status, desktop.hypervisor) == (S.STARTED, lab2), desktop.status_reason
    assert libvirt_driver.domain_state(lab2.uri, desktop.domain_name) == "running"
    assert routed.routed == [
        ("desktops.tasks.start_desktop", "celery"),
        ("desktops.tasks.boot_desktop", "hv.lab2"),
    ]

    routed.routed.clear()
    routed(desktop_stop, actor=student, desktop=desktop)
    assert routed.routed == [("desktops.tasks.force_off_desktop", "hv.lab2")]
    desktop.refresh_from_db()
    assert desktop.status == S.STOPPED


def test_a_class_is_provisioned_by_the_worker_of_each_host_it_is_spread_over(
    make_host: HostMaker, routed: RoutedRunner, base_template: Any, admin: Any
) -> None:
    local = make_host("local", 16, 4)
    lab2 = make_host("lab2", 16, 4, queue="hv.lab2")
    students = [UserFactory.create() for _ in range(4)]
    routed(
        desktops_create_bulk,
        actor=admin,
        template=base_template,
        owners=students,
        name="Lab",
    )
    desktops = list(Desktop.objects.select_related("hypervisor"))
    assert {desktop.status for desktop in desktops} == {S.STOPPED}
    assert Counter(desktop.hypervisor.name for desktop in desktops if desktop.hypervisor) == {
        "local": 2,
        "lab2": 2,
    }
    for desktop in desktops:
        assert desktop.hypervisor is not None
        assert libvirt_driver.domain_state(desktop.hypervisor.uri, desktop.domain_name) == (
            "shutoff"
        )
    # One task placed the class and made local's share; lab2's share went to its worker.
    assert routed.routed == [
        ("desktops.tasks.create_desktops", "celery"),
        ("desktops.tasks.provision_desktops", "hv.lab2"),
    ]
    assert local.pk != lab2.pk


def test_a_host_with_its_own_worker_is_reconciled_there_and_sampled_centrally(
    make_host: HostMaker, routed: RoutedRunner
) -> None:
    make_host("local", 16, 4)
    lab2 = make_host("lab2", 16, 4, queue="hv.lab2")
    vanished = Desktop.objects.create(
        name="d", owner=UserFactory.create(), hardware=_profile(), hypervisor=lab2, status=S.STARTED
    )
    changes = routed(reconcile_all_hypervisors)
    assert changes == {"local": 0}
    assert routed.routed == [("desktops.tasks.reconcile_hypervisor", "hv.lab2")]
    lab2.refresh_from_db()
    assert lab2.last_seen_at is not None  # sampled by the central worker all the same
    vanished.refresh_from_db()  # reconciled by the task sent to lab2's worker
    assert vanished.status == S.FAILED and "vanished" in vanished.status_reason

    # lab2's libvirt stops answering between the sample and its worker's turn: the task
    # leaves the verdict to the central monitor instead of failing.
    Hypervisor.objects.filter(pk=lab2.pk).update(uri="qemu+unix:///system?socket=/nonexistent")
    assert reconcile_hypervisor(hypervisor_id=lab2.pk) == 0


# --- adding a host ---------------------------------------------------------------------------


def test_adding_a_host_with_its_own_worker_queue_tags_and_pools(
    pools: dict[str, StoragePool],
) -> None:
    call_command(
        "isard_hypervisor",
        "add",
        "lab2",
        "test:///default",
        "--queue",
        "hv.lab2",
        "--tag",
        "gpu",
        "--tag",
        "room-2",
        "--pool",
        "desktops",
        "--pool",
        "templates",
        "--accelerator",
        "qemu",
    )
    host = Hypervisor.objects.get(name="lab2")
    assert (host.uri, host.queue, host.tags, host.accelerator_setting) == (
        "test:///default",
        "hv.lab2",
        ["gpu", "room-2"],
        "qemu",
    )
    assert sorted(host.storage_pools.values_list("name", flat=True)) == ["desktops", "templates"]
    assert host.state == "online"  # sampled once from here
    assert HypervisorEvent.objects.filter(hypervisor=host, message__contains="hv.lab2").exists()

    # Changed: what is not given stays; an empty queue hands it to the central worker.
    call_command("isard_hypervisor", "add", "lab2", "test:///default", "--queue", "")
    host.refresh_from_db()
    assert hypervisor_queue(host) == "celery"
    assert (host.tags, host.accelerator_setting, host.storage_pools.count()) == (
        ["gpu", "room-2"],
        "qemu",
        2,
    )
    # A new host with nothing but its URI: the central worker, every pool, detection.
    fresh = hypervisor_add(name="lab3", uri="qemu+tls://lab3.school.lan/system")
    assert (fresh.queue, fresh.tags, fresh.accelerator_setting) == ("", [], "auto")
    assert fresh.storage_pools.count() == len(pools)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["lab2", "lab2.school.lan"], "is not a libvirt URI"),
        (["lab2", "vmware://lab2/"], "is not a libvirt URI"),
        (["lab2", "test:///default", "--queue", "hv lab2"], "queue: A queue name is"),
        (["lab2", "test:///default", "--pool", "nfs"], "No storage pool named nfs"),
        (["", "test:///default"], "name: This field cannot be blank"),
    ],
)
def test_adding_a_host_with_bad_input_says_what_is_wrong(
    pools: dict[str, StoragePool], arguments: list[str], message: str
) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("isard_hypervisor", "add", *arguments)
    assert not Hypervisor.objects.exists()
    with pytest.raises(ApplicationError, match=message):
        hypervisor_add(
            name=arguments[0],
            uri=arguments[1],
            queue=arguments[3] if "--queue" in arguments else None,
            pool_names=[arguments[3]] if "--pool" in arguments else None,
        )


# --- a real worker on one host's queue -----------------------------------------------------------


@pytest.fixture
def host_worker(storage_root: Path) -> Iterator[str]:
    """A real Celery worker, in its own process, that consumes one queue only."""
    queue = f"hv.test-{uuid.uuid4().hex[:10]}"
    log = storage_root / "worker.log"
    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "isard.settings"}
    environment["REDIS_URL"] = django_settings.REDIS_URL
    with log.open("wb") as output:
        worker = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("celery")),
                "-A",
                "isard",
                "worker",
                "--queues",
                queue,
                "--pool",
                "solo",
                "--hostname",
                f"{queue}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel",
                "INFO",
            ],
            cwd=Path(django_settings.BASE_DIR),
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield queue
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        print(log.read_text(errors="replace")[-3000:])


def test_a_worker_consuming_one_hosts_queue_gets_that_hosts_tasks_and_no_others(
    host_worker: str, pools: dict[str, StoragePool], storage_root: Path
) -> None:
    lab2 = hypervisor_add(name="lab2", uri="test:///default", queue=host_worker)
    lab3 = hypervisor_add(name="lab3", uri="test:///default", queue=f"{host_worker}-elsewhere")

    # The worker may still be starting: the check waits in lab2's queue until it is up.
    answer = hypervisor_check(hypervisor=lab2, timeout=120)
    assert answer["queue"] == host_worker
    assert answer["worker"].startswith(f"{host_worker}@")
    assert answer["libvirt"] and not answer["libvirt_error"]
    assert answer["pools"] == {pool.path: "ok" for pool in pools.values()}
    assert answer["ok"] is True

    # The same check from the command line, as the README shows it.
    output = StringIO()
    call_command("isard_hypervisor", "check", "lab2", stdout=output)
    assert f"took it from queue {host_worker}" in output.getvalue()
    assert f"pool {pools['desktops'].path}: ok" in output.getvalue()
    output = StringIO()
    call_command("isard_hypervisor", "list", stdout=output)
    assert f"lab2\ttest:///default\t{host_worker}\t" in output.getvalue()

    # lab3's check goes to lab3's queue, which this worker does not consume.
    with pytest.raises(InfrastructureError, match=f"No worker answered on queue {lab3.queue}"):
        hypervisor_check(hypervisor=lab3, timeout=3)
    with pytest.raises(CommandError, match=f"No worker answered on queue {lab3.queue}"):
        call_command("isard_hypervisor", "check", "lab3", "--timeout", "1")

    # A desktop task for a desktop on lab3, sent the way the platform sends it, waits in
    # lab3's queue on Redis (nobody runs it there).
    desktop = Desktop.objects.create(
        name="d", owner=UserFactory.create(), hardware=_profile(), hypervisor=lab3
    )
    broker = redis.Redis.from_url(django_settings.REDIS_URL)
    try:
        send_task(task_calls.force_off_desktop(desktop_id=desktop.pk, hypervisor=lab3))
        waiting = [m for m in broker.lrange(lab3.queue, 0, -1) if b"force_off_desktop" in m]
        assert len(waiting) == 1
        assert broker.llen(lab2.queue) == 0
    finally:
        broker.delete(lab3.queue)


def test_a_host_check_fails_when_the_worker_cannot_write_in_a_pool(
    pools: dict[str, StoragePool], storage_root: Path, tmp_path: Path
) -> None:
    missing = StoragePool.objects.create(name="nfs", purpose="desktops", path=str(tmp_path / "no"))
    answer = host_check_local(uri="test:///default", pool_paths=[missing.path])
    assert answer["pools"] == {missing.path: "missing"}
    assert answer["ok"] is False
    answer = host_check_local(uri="qemu+unix:///system?socket=/nonexistent/sock", pool_paths=[])
    assert "cannot connect" in answer["libvirt_error"] and answer["ok"] is False
