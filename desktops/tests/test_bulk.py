"""A whole class gets its desktops in one request: bulk rows, concurrent disks and domains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from accounts.choices import CourseRole, Role
from accounts.tests.factories import CourseFactory, MembershipFactory, UserFactory
from desktops.choices import DesktopStatus
from desktops.models import Desktop, DesktopEvent
from desktops.services.provisioning import desktops_create_bulk, desktops_provision_bulk
from hypervisors import qemu_img
from hypervisors.drivers import libvirt_driver
from isard.core.errors import PermissionDeniedError

pytestmark = pytest.mark.django_db


@pytest.fixture
def course() -> Any:
    course = CourseFactory.create()
    MembershipFactory.create(
        course=course,
        user=UserFactory.create(role=Role.TEACHER, username="t"),
        role=CourseRole.TEACHER,
    )
    for index in range(6):
        MembershipFactory.create(course=course, user=UserFactory.create(username=f"s{index}"))
    return course


def students(course: Any) -> list[Any]:
    return [m.user for m in course.memberships.filter(role=CourseRole.STUDENT).order_by("user_id")]


def teacher(course: Any) -> Any:
    return course.memberships.get(role=CourseRole.TEACHER).user


def test_a_class_gets_one_overlay_and_domain_each_in_one_task(
    run: Any, course: Any, test_hypervisor: Any, base_template: Any
) -> None:
    desktops = run(
        desktops_create_bulk,
        actor=teacher(course),
        template=base_template,
        owners=students(course),
        name="Lab",
        course=course,
    )
    assert run.sent == ["desktops.tasks.create_desktops"]
    assert len(desktops) == 6
    for desktop in Desktop.objects.filter(course=course):
        assert desktop.status == DesktopStatus.STOPPED, desktop.status_reason
        assert desktop.disk is not None and desktop.disk.parent == base_template.disk
        assert qemu_img.info(Path(desktop.disk.path)).backing_file == base_template.disk.path
        assert desktop.disk.actual_size_bytes > 0
        assert libvirt_driver.domain_state("test:///default", desktop.domain_name) == "shutoff"
        statuses = list(desktop.events.values_list("to_status", flat=True))
        assert statuses == [DesktopStatus.CREATING, DesktopStatus.STOPPED]
    paths = {d.disk.path for d in Desktop.objects.filter(course=course) if d.disk is not None}
    assert len(paths) == 6


def test_running_the_provisioning_task_twice_changes_nothing(
    run: Any, course: Any, test_hypervisor: Any, base_template: Any
) -> None:
    desktops = run(
        desktops_create_bulk,
        actor=teacher(course),
        template=base_template,
        owners=students(course),
        name="Lab",
        course=course,
    )
    events = DesktopEvent.objects.count()
    assert desktops_provision_bulk(desktop_ids=[d.pk for d in desktops]) == []
    assert DesktopEvent.objects.count() == events


def test_with_no_hypervisor_every_desktop_fails_with_the_reason_and_no_disk(
    run: Any, course: Any, pools: Any, base_template: Any, storage_root: Path
) -> None:
    run(
        desktops_create_bulk,
        actor=teacher(course),
        template=base_template,
        owners=students(course),
        name="Lab",
        course=course,
    )
    for desktop in Desktop.objects.filter(course=course):
        assert desktop.status == DesktopStatus.FAILED
        assert "No hypervisor is online" in desktop.status_reason
        assert desktop.disk is None
    assert list((storage_root / "desktops").iterdir()) == []


def test_a_teacher_cannot_create_desktops_for_a_course_they_do_not_teach(
    course: Any, base_template: Any
) -> None:
    other_teacher = UserFactory.create(role=Role.TEACHER)
    with pytest.raises(PermissionDeniedError, match="course you teach"):
        desktops_create_bulk(
            actor=other_teacher,
            template=base_template,
            owners=students(course),
            name="Lab",
            course=course,
        )
    assert not Desktop.objects.exists()


def test_students_outside_the_course_are_named_and_nothing_is_created(
    course: Any, base_template: Any
) -> None:
    outsider = UserFactory.create(username="outsider")
    with pytest.raises(PermissionDeniedError, match="outsider"):
        desktops_create_bulk(
            actor=teacher(course),
            template=base_template,
            owners=[*students(course), outsider],
            name="Lab",
            course=course,
        )
    assert not Desktop.objects.exists()


def test_a_student_cannot_create_desktops_for_others(course: Any, base_template: Any) -> None:
    with pytest.raises(PermissionDeniedError):
        desktops_create_bulk(
            actor=students(course)[0],
            template=base_template,
            owners=students(course),
            name="Lab",
            course=course,
        )
