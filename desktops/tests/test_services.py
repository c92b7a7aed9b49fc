"""Desktop engine services on libvirt's test driver with real qemu-img disks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from accounts.choices import CourseRole, Role
from accounts.tests.factories import CourseFactory, MembershipFactory, UserFactory
from desktops.choices import DesktopStatus
from desktops.fleet.placement import choose_hypervisor
from desktops.models import Desktop, DesktopEvent
from desktops.services.domains import desktop_domain_spec, desktop_domain_xml
from desktops.services.lifecycle import (
    desktop_shutdown,
    desktop_shutdown_timeout,
    desktop_start,
    desktop_stop,
)
from desktops.services.provisioning import desktop_create, desktops_create_bulk
from desktops.services.reconciliation import (
    desktop_sync_state,
    desktops_reconcile,
    desktops_recover_stuck,
)
from desktops.services.recycle_bin import desktop_delete, desktop_restore, desktops_purge_expired
from desktops.services.transitions import desktop_transition
from hypervisors import qemu_img
from hypervisors.choices import DiskStatus
from hypervisors.drivers import libvirt_driver
from hypervisors.models import Disk
from isard.core.errors import ConflictError, NoCapacityError, PermissionDeniedError

pytestmark = pytest.mark.django_db

S = DesktopStatus


@pytest.fixture
def student() -> Any:
    return UserFactory.create(role=Role.STUDENT)


@pytest.fixture
def desktop(run: Any, test_hypervisor: Any, base_template: Any, student: Any) -> Desktop:
    created = run(desktop_create, actor=student, template=base_template, name="Mine")
    created.refresh_from_db()
    return created


def state(desktop: Desktop) -> libvirt_driver.DomainState:
    return libvirt_driver.domain_state("test:///default", desktop.domain_name)


def test_created_desktop_is_an_overlay_on_the_template_disk_and_a_defined_domain(
    desktop: Desktop, base_template: Any
) -> None:
    assert desktop.status == S.STOPPED
    assert desktop.disk is not None
    image = qemu_img.info(Path(desktop.disk.path))
    assert image.backing_file == base_template.disk.path
    assert desktop.disk.parent == base_template.disk
    # An overlay costs a few hundred KiB, not a copy of the template.
    assert desktop.disk.actual_size_bytes < 1024 * 1024
    assert state(desktop) == libvirt_driver.DomainState.SHUTOFF
    assert [e.to_status for e in desktop.events.all()] == [S.CREATING, S.STOPPED]


def test_create_is_refused_for_a_template_not_shared_with_the_user(
    run: Any, test_hypervisor: Any, base_template: Any
) -> None:
    base_template.shared_with_everyone = False
    base_template.save()
    with pytest.raises(PermissionDeniedError):
        desktop_create(actor=UserFactory.create(), template=base_template, name="x")


def test_start_runs_the_domain_and_a_second_start_does_nothing_more(
    run: Any, desktop: Desktop, student: Any
) -> None:
    run(desktop_start, actor=student, desktop=desktop)
    again = Desktop.objects.get(pk=desktop.pk)
    run(desktop_start, actor=student, desktop=again)
    desktop.refresh_from_db()
    assert desktop.status == S.STARTED
    assert state(desktop) == libvirt_driver.DomainState.RUNNING
    assert run.sent.count("desktops.tasks.start_desktop") == 1
    assert len(desktop.graphics_password) == 8


def test_two_racing_start_requests_start_the_desktop_once(
    run: Any, desktop: Desktop, student: Any
) -> None:
    first = Desktop.objects.get(pk=desktop.pk)
    second = Desktop.objects.get(pk=desktop.pk)  # loaded before the first one wins
    run(desktop_start, actor=student, desktop=first)
    run(desktop_start, actor=student, desktop=second)
    assert run.sent.count("desktops.tasks.start_desktop") == 1
    assert DesktopEvent.objects.filter(desktop=desktop, to_status=S.STARTING).count() == 1


def test_student_cannot_start_another_students_desktop(desktop: Desktop) -> None:
    other = UserFactory.create(role=Role.STUDENT)
    with pytest.raises(PermissionDeniedError):
        desktop_start(actor=other, desktop=desktop)


def test_start_on_a_deleting_desktop_is_refused_with_a_clear_error(
    desktop: Desktop, student: Any
) -> None:
    desktop_transition(desktop=desktop, to=S.DELETING)
    with pytest.raises(ConflictError, match="deleting"):
        desktop_start(actor=student, desktop=desktop)


def test_a_start_is_refused_when_the_template_file_is_missing_and_nothing_changes(
    run: Any, desktop: Desktop, student: Any, base_template: Any
) -> None:
    Path(base_template.disk.path).unlink()
    sent_before = list(run.sent)
    with pytest.raises(ConflictError, match="the disk or its template is missing") as refused:
        run(desktop_start, actor=student, desktop=desktop)
    assert refused.value.extra["missing"][0].startswith(base_template.disk.path)
    desktop.refresh_from_db()
    assert desktop.status == S.STOPPED
    assert run.sent == sent_before
    assert state(desktop) == libvirt_driver.DomainState.SHUTOFF


def test_a_template_file_that_vanishes_before_the_boot_fails_the_start_with_the_reason(
    run: Any, desktop: Desktop, student: Any, base_template: Any
) -> None:
    """Between the request and the worker's boot: the worker's own check catches it."""
    with run.capture(execute=False) as callbacks:
        desktop_start(actor=student, desktop=desktop)
    Path(base_template.disk.path).unlink()
    run.process(callbacks)
    desktop.refresh_from_db()
    assert desktop.status == S.FAILED
    assert "disk or its template is missing" in desktop.status_reason
    assert state(desktop) == libvirt_driver.DomainState.SHUTOFF


def test_no_online_hypervisor_fails_the_start_with_a_reason(
    run: Any, desktop: Desktop, student: Any, test_hypervisor: Any
) -> None:
    test_hypervisor.state = "offline"
    test_hypervisor.save()
    run(desktop_start, actor=student, desktop=desktop)
    desktop.refresh_from_db()
    assert desktop.status == S.FAILED
    assert "No hypervisor is online" in desktop.status_reason


def test_placement_refuses_a_desktop_bigger_than_any_host(test_hypervisor: Any) -> None:
    with pytest.raises(NoCapacityError, match="1048576 MiB"):
        choose_hypervisor(memory_mib=1024 * 1024)


def test_a_full_fleet_still_creates_desktops_and_refuses_only_their_start(
    run: Any, test_hypervisor: Any, base_template: Any, student: Any
) -> None:
    # This hour's class fills the only host; next hour's desktops are created anyway.
    test_hypervisor.memory_mib = test_hypervisor.free_memory_mib = 100
    test_hypervisor.save()
    one = run(desktop_create, actor=student, template=base_template, name="one")
    teacher = UserFactory.create(role=Role.TEACHER)
    course = CourseFactory.create()
    MembershipFactory.create(course=course, user=teacher, role=CourseRole.TEACHER)
    MembershipFactory.create(course=course, user=student)
    [class_desktop] = run(
        desktops_create_bulk,
        actor=teacher,
        template=base_template,
        owners=[student],
        course=course,
        name="class",
    )
    for desktop in (one, class_desktop):
        desktop.refresh_from_db()
        assert desktop.status == S.STOPPED, desktop.status_reason
        assert desktop.hypervisor == test_hypervisor
    run(desktop_start, actor=student, desktop=one)
    one.refresh_from_db()
    assert one.status == S.FAILED
    assert "MiB" in one.status_reason


def test_failed_definition_leaves_no_orphan_disk(
    run: Any, test_hypervisor: Any, base_template: Any, student: Any, storage_root: Path
) -> None:
    # A typo in the profile's boot order: libvirt's schema has no boot device "usb".
    hardware = base_template.hardware
    hardware.boot_order = ["usb"]
    hardware.save()
    desktop = run(desktop_create, actor=student, template=base_template, name="Bad")
    desktop.refresh_from_db()
    if desktop.status == S.STOPPED:
        pytest.fail("the test driver accepted the domain; this test needs a failing definition")
    assert desktop.status == S.FAILED
    assert desktop.status_reason.startswith("Could not create the desktop")
    assert desktop.disk is None
    assert list((storage_root / "desktops").iterdir()) == []
    assert state(desktop) == libvirt_driver.DomainState.MISSING


def test_graceful_shutdown_ends_stopped_without_forcing(
    run: Any, desktop: Desktop, student: Any
) -> None:
    run(desktop_start, actor=student, desktop=desktop)
    desktop.refresh_from_db()
    run(desktop_shutdown, actor=student, desktop=desktop)
    assert run.delayed == [("desktops.tasks.shutdown_timeout", {"desktop_id": desktop.pk})]
    # The test driver powers off at once; the timeout check sees it and does not force.
    assert state(desktop) == libvirt_driver.DomainState.SHUTOFF
    run.run_delayed()
    desktop.refresh_from_db()
    assert desktop.status == S.STOPPED
    reasons = list(desktop.events.values_list("reason", flat=True))
    assert not any("did not shut down in time" in r for r in reasons)


def test_a_guest_ignoring_shutdown_is_forced_off_after_the_timeout(
    run: Any, desktop: Desktop, student: Any
) -> None:
    run(desktop_start, actor=student, desktop=desktop)
    desktop.refresh_from_db()
    # As if the ACPI request had been sent and ignored: the guest keeps running.
    desktop_transition(desktop=desktop, to=S.SHUTTING_DOWN)
    run(desktop_shutdown_timeout, desktop_id=desktop.pk)
    desktop.refresh_from_db()
    assert desktop.status == S.STOPPED
    assert state(desktop) == libvirt_driver.DomainState.SHUTOFF
    reasons = list(desktop.events.values_list("reason", flat=True))
    assert any("did not shut down in time" in r for r in reasons)


def test_force_stop(run: Any, desktop: Desktop, student: Any) -> None:
    run(desktop_start, actor=student, desktop=desktop)
    desktop.refresh_from_db()
    run(desktop_stop, actor=student, desktop=desktop)
    desktop.refresh_from_db()
    assert desktop.status == S.STOPPED
    assert state(desktop) == libvirt_driver.DomainState.SHUTOFF


def test_delete_undefines_the_domain_and_keeps_the_disk_until_purge(
    run: Any, desktop: Desktop, student: Any
) -> None:
    disk_path = Path(desktop.disk.path)  # type: ignore[union-attr]
    run(desktop_delete, actor=student, desktop=desktop)
    desktop.refresh_from_db()
    assert desktop.status == S.DELETED
    assert desktop.deleted_at is not None
    assert state(desktop) == libvirt_driver.DomainState.MISSING
    assert disk_path.exists()
    assert Disk.objects.get(path=str(disk_path)).status == DiskStatus.RECYCLED

    run(desktop_restore, actor=student, desktop=desktop)
    desktop.refresh_from_db()
    assert desktop.status == S.STOPPED
    run(desktop_start, actor=student, desktop=desktop)
    desktop.refresh_from_db()
    assert desktop.status == S.STARTED  # redefined on start, same disk
    assert desktop.disk is not None and desktop.disk.path == str(disk_path)


def test_purge_removes_only_expired_desktops(run: Any, desktop: Desktop, student: Any) -> None:
    from datetime import timedelta

    from django.utils import timezone

    disk_path = Path(desktop.disk.path)  # type: ignore[union-attr]
    run(desktop_delete, actor=student, desktop=desktop)
    assert desktops_purge_expired() == 0
    assert disk_path.exists()
    later = timezone.now() + timedelta(days=30)
    assert desktops_purge_expired(now=later) == 1
    assert not disk_path.exists()
    assert not Desktop.objects.filter(pk=desktop.pk).exists()


def test_running_desktop_cannot_be_deleted(run: Any, desktop: Desktop, student: Any) -> None:
    run(desktop_start, actor=student, desktop=desktop)
    desktop.refresh_from_db()
    with pytest.raises(ConflictError, match="Stop the desktop"):
        desktop_delete(actor=student, desktop=desktop)


def test_reconcile_notices_a_guest_that_powered_off_and_a_domain_that_vanished(
    run: Any, desktop: Desktop, student: Any, test_hypervisor: Any
) -> None:
    run(desktop_start, actor=student, desktop=desktop)
    libvirt_driver.destroy_domain("test:///default", desktop.domain_name)
    assert desktops_reconcile(hypervisor=test_hypervisor) == 1
    desktop.refresh_from_db()
    assert desktop.status == S.STOPPED
    assert "powered off" in desktop.status_reason

    run(desktop_start, actor=student, desktop=Desktop.objects.get(pk=desktop.pk))
    libvirt_driver.undefine_domain("test:///default", desktop.domain_name)
    desktops_reconcile(hypervisor=test_hypervisor)
    desktop.refresh_from_db()
    assert desktop.status == S.FAILED
    assert "vanished" in desktop.status_reason


def test_a_crash_fails_a_running_desktop_with_why_but_only_stops_one_being_forced_off(
    run: Any, desktop: Desktop, student: Any
) -> None:
    crashed = libvirt_driver.DomainState.CRASHED
    run(desktop_start, actor=student, desktop=desktop)
    libvirt_driver.destroy_domain("test:///default", desktop.domain_name)  # as on_crash does
    desktop.refresh_from_db()
    desktop = desktop_sync_state(desktop=desktop, state=crashed, source="libvirt event")
    assert desktop.status == S.FAILED
    assert desktop.status_reason == "its operating system crashed (libvirt event); start it again"

    run(desktop_start, actor=student, desktop=desktop)
    desktop.refresh_from_db()
    assert desktop.status == S.STARTED, desktop.status_reason
    desktop_transition(desktop=desktop, to=S.STOPPING)
    desktop = desktop_sync_state(desktop=desktop, state=crashed, source="libvirt event")
    assert desktop.status == S.STOPPED  # the student wanted it off: no failure to report


def test_a_start_the_host_does_not_answer_fails_in_time_and_a_late_start_is_settled(
    run: Any,
    desktop: Desktop,
    student: Any,
    test_hypervisor: Any,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    import libvirt

    # Long enough for the call's thread to reach the daemon however loaded the machine is
    # (a call given up before it reached the daemon never runs, and there would be no late
    # start to settle); `reached` says it did.
    settings.ISARD_LIBVIRT_CALL_TIMEOUT_SECONDS = 1.5
    libvirt_driver.ping("test:///default")  # the connection is open before the clock runs
    reached, release, done = threading.Event(), threading.Event(), threading.Event()
    real_create = libvirt.virDomain.create

    def hung_create(domain: libvirt.virDomain) -> int:
        reached.set()
        release.wait(30)  # the daemon got the request, then stopped answering
        try:
            return real_create(domain)
        finally:
            done.set()

    monkeypatch.setattr(libvirt.virDomain, "create", hung_create)
    try:
        run(desktop_start, actor=student, desktop=desktop)
        desktop.refresh_from_db()
        assert desktop.status == S.FAILED
        assert desktop.status_reason == (
            f"Could not start on {test_hypervisor.name}: start {desktop.domain_name}: "
            "the libvirt daemon at test:///default did not answer in 1.5 s"
        )
        assert reached.is_set(), "the start never reached the daemon"
    finally:
        release.set()

    # The daemon answers again and does the start after all: the guest runs while its
    # desktop says failed, until the reconciliation sees it. (On libvirt's test driver the
    # late start lands on the abandoned connection, and a new connection then reads the
    # domain as missing; so the guest is defined and started again here, as a real daemon
    # would have it running. tests/integration/test_faults.py freezes a real daemon.)
    assert done.wait(30), "the late start never returned"
    spec = desktop_domain_spec(desktop, test_hypervisor)
    libvirt_driver.define_domain("test:///default", desktop_domain_xml(spec))
    libvirt_driver.start_domain("test:///default", desktop.domain_name)
    desktops_reconcile(hypervisor=test_hypervisor)
    desktop.refresh_from_db()
    assert desktop.status == S.STARTED
    assert desktop.status_reason == "running (reconciliation)"


def test_a_desktop_stuck_starting_is_settled_by_what_the_hypervisor_runs(
    run: Any, desktop: Desktop, student: Any
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    # As if the boot task had died right after starting the guest.
    desktop_transition(desktop=desktop, to=S.STARTING)
    libvirt_driver.start_domain("test:///default", desktop.domain_name)
    assert desktops_recover_stuck() == 0  # not stuck yet: it may still be working
    later = timezone.now() + timedelta(minutes=10)
    assert desktops_recover_stuck(now=later) == 1
    desktop.refresh_from_db()
    assert desktop.status == S.STARTED


def test_a_desktop_stuck_creating_fails_with_advice(
    test_hypervisor: Any, base_template: Any, student: Any
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    desktop = desktop_create(actor=student, template=base_template, name="never")
    later = timezone.now() + timedelta(minutes=10)
    assert desktops_recover_stuck(now=later) == 1
    desktop.refresh_from_db()
    assert desktop.status == S.FAILED
    assert "did not finish" in desktop.status_reason
