"""Deployments: a class gets its desktops in one request, and the teacher acts on all of them.

Services on libvirt's test:/// driver with real qcow2 overlays; the `run` fixture runs the
tasks the services schedule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from accounts.choices import CourseRole, Role
from accounts.tests.factories import MembershipFactory, UserFactory
from desktops.choices import DesktopStatus
from desktops.models import Deployment, Desktop
from desktops.services.deployments import (
    can_manage_deployment,
    deployment_create,
    deployment_create_missing,
    deployment_delete,
    deployment_desktops,
    deployment_missing_students,
    deployment_recreate,
    deployment_set_co_teachers,
    deployment_set_visible,
    deployment_start,
    deployment_stop,
    desktops_hidden_from,
)
from hypervisors import qemu_img
from hypervisors.drivers import libvirt_driver
from isard.core.errors import ApplicationError, ConflictError, PermissionDeniedError
from tests.campus import Campus

pytestmark = pytest.mark.django_db

S = DesktopStatus


@pytest.fixture
def klass(north: Campus) -> Campus:
    """The north campus with three more students in the teacher's course (four in all)."""
    for index in range(3):
        student = UserFactory.create(username=f"north-extra{index}", school=north.school)
        MembershipFactory.create(course=north.course, user=student, role=CourseRole.STUDENT)
    return north


def students_of(campus: Campus) -> list[Any]:
    memberships = campus.course.memberships.filter(role=CourseRole.STUDENT)
    return [m.user for m in memberships.select_related("user").order_by("user__username")]


def deploy(run: Any, campus: Campus, template: Any, **kwargs: Any) -> Deployment:
    deployment, _ = run(
        deployment_create,
        actor=campus.teacher,
        course=campus.course,
        template=template,
        name="Lab 3",
        **kwargs,
    )
    deployment.refresh_from_db()
    return deployment


def statuses(deployment: Deployment) -> list[str]:
    return sorted(deployment_desktops(deployment).values_list("status", flat=True))


def test_a_teacher_deploys_to_the_whole_course_with_one_provisioning_task(
    run: Any, klass: Campus, test_hypervisor: Any, base_template: Any
) -> None:
    deployment = deploy(run, klass, base_template)
    assert run.sent == ["desktops.tasks.create_desktops"]
    desktops = list(deployment_desktops(deployment))
    assert {d.owner_id for d in desktops} == {s.pk for s in students_of(klass)}
    for desktop in desktops:
        assert desktop.status == S.STOPPED, desktop.status_reason
        assert desktop.course_id == klass.course.pk and desktop.name == "Lab 3"
        assert desktop.disk is not None
        assert qemu_img.info(Path(desktop.disk.path)).backing_file == base_template.disk.path
        assert libvirt_driver.domain_state(test_hypervisor.uri, desktop.domain_name) == "shutoff"
    assert deployment.whole_course and deployment.owner == klass.teacher


def test_a_deployment_to_chosen_students_only_gives_them_desktops(
    run: Any, klass: Campus, test_hypervisor: Any, base_template: Any
) -> None:
    chosen = students_of(klass)[:2]
    deployment = deploy(run, klass, base_template, students=chosen)
    owners = set(deployment_desktops(deployment).values_list("owner_id", flat=True))
    assert owners == {s.pk for s in chosen}
    # A newcomer to the course is not one of the chosen: nothing is missing.
    newcomer = UserFactory.create(username="north-late", school=klass.school)
    MembershipFactory.create(course=klass.course, user=newcomer, role=CourseRole.STUDENT)
    assert deployment_missing_students(deployment) == []


def test_students_outside_the_course_and_co_teachers_who_do_not_teach_it_are_refused(
    klass: Campus, base_template: Any
) -> None:
    with pytest.raises(ApplicationError, match="north-student2"):
        deployment_create(
            actor=klass.teacher,
            course=klass.course,
            template=base_template,
            name="Lab",
            students=[klass.other_student],
        )
    with pytest.raises(ApplicationError, match="Co-teachers must teach"):
        deployment_create(
            actor=klass.teacher,
            course=klass.course,
            template=base_template,
            name="Lab",
            co_teachers=[klass.other_teacher],
        )
    assert not Deployment.objects.exists() and not Desktop.objects.filter(name="Lab").exists()


def test_a_teacher_cannot_deploy_to_another_teachers_course(
    klass: Campus, base_template: Any
) -> None:
    with pytest.raises(PermissionDeniedError, match="course you teach"):
        deployment_create(
            actor=klass.other_teacher, course=klass.course, template=base_template, name="Lab"
        )


def test_start_all_and_stop_all(
    run: Any, klass: Campus, test_hypervisor: Any, base_template: Any
) -> None:
    deployment = deploy(run, klass, base_template)
    outcome = run(deployment_start, actor=klass.teacher, deployment=deployment)
    assert len(outcome.changed) == 4 and outcome.refused == []
    assert statuses(deployment) == [S.STARTED] * 4
    for desktop in deployment_desktops(deployment):
        assert libvirt_driver.domain_state(test_hypervisor.uri, desktop.domain_name) == "running"
    # Starting again changes nothing and refuses nothing.
    again = run(deployment_start, actor=klass.teacher, deployment=deployment)
    assert again.changed == [] and again.refused == []

    run(deployment_stop, actor=klass.teacher, deployment=deployment, force=True)
    assert statuses(deployment) == [S.STOPPED] * 4


def test_another_teacher_cannot_act_on_the_deployment_but_a_co_teacher_can(
    run: Any, klass: Campus, test_hypervisor: Any, base_template: Any
) -> None:
    deployment = deploy(run, klass, base_template)
    with pytest.raises(PermissionDeniedError):
        deployment_start(actor=klass.other_teacher, deployment=deployment)
    co_teacher = UserFactory.create(username="north-co", role=Role.TEACHER, school=klass.school)
    MembershipFactory.create(course=klass.course, user=co_teacher, role=CourseRole.TEACHER)
    deployment_set_co_teachers(actor=klass.teacher, deployment=deployment, co_teachers=[co_teacher])
    assert can_manage_deployment(co_teacher, deployment)
    outcome = run(deployment_start, actor=co_teacher, deployment=deployment)
    assert len(outcome.changed) == 4
    assert not can_manage_deployment(klass.other_teacher, deployment)


def test_hiding_shuts_the_desktops_down_and_keeps_them_from_the_students(
    run: Any, klass: Campus, test_hypervisor: Any, base_template: Any
) -> None:
    deployment = deploy(run, klass, base_template)
    run(deployment_start, actor=klass.teacher, deployment=deployment)
    outcome = run(
        deployment_set_visible,
        actor=klass.teacher,
        deployment=deployment,
        visible=False,
    )
    assert len(outcome.changed) == 4
    assert statuses(deployment) == [S.SHUTTING_DOWN] * 4
    run.run_delayed()  # the shutdown timeouts: the test driver's guests are off already
    assert statuses(deployment) == [S.STOPPED] * 4
    student = klass.student
    hidden = desktops_hidden_from(student)
    assert set(hidden.values_list("deployment_id", flat=True)) == {deployment.pk}
    assert not desktops_hidden_from(klass.teacher).exists()

    deployment_set_visible(actor=klass.teacher, deployment=deployment, visible=True)
    assert not desktops_hidden_from(student).exists()


def test_students_who_join_later_get_their_desktops(
    run: Any, klass: Campus, test_hypervisor: Any, base_template: Any
) -> None:
    deployment = deploy(run, klass, base_template)
    late = UserFactory.create(username="north-late", school=klass.school)
    MembershipFactory.create(course=klass.course, user=late, role=CourseRole.STUDENT)
    assert deployment_missing_students(deployment) == [late]
    run.sent.clear()
    outcome = run(deployment_create_missing, actor=klass.teacher, deployment=deployment)
    assert [d.owner for d in outcome.changed] == [late]
    assert run.sent == ["desktops.tasks.create_desktops"]
    assert statuses(deployment) == [S.STOPPED] * 5
    again = run(deployment_create_missing, actor=klass.teacher, deployment=deployment)
    assert again.changed == []


def test_recreate_gives_fresh_desktops_from_a_newer_template_and_recycles_the_old(
    run: Any, klass: Campus, test_hypervisor: Any, base_template: Any
) -> None:
    from templates_app.services.templates import template_register_base

    deployment = deploy(run, klass, base_template)
    old = {d.pk: d.disk_id for d in deployment_desktops(deployment)}
    newer = template_register_base(
        name="Newer", image=Path(base_template.disk.path), hardware=base_template.hardware
    )
    outcome = run(
        deployment_recreate,
        actor=klass.teacher,
        deployment=deployment,
        template=newer,
    )
    assert len(outcome.changed) == 4 and outcome.refused == []
    deployment.refresh_from_db()
    assert deployment.template == newer
    fresh = list(deployment_desktops(deployment))
    assert {d.pk for d in fresh}.isdisjoint(old)
    assert all(d.status == S.STOPPED and d.template == newer for d in fresh)
    for desktop in Desktop.objects.filter(pk__in=old):
        assert desktop.status == S.DELETED and desktop.deployment is None
        assert desktop.disk_id == old[desktop.pk]  # in the recycle bin, restorable


def test_recreate_one_running_desktop_is_refused_and_the_others_are_recreated(
    run: Any, klass: Campus, test_hypervisor: Any, base_template: Any
) -> None:
    from desktops.services.lifecycle import desktop_start

    deployment = deploy(run, klass, base_template)
    first, second = list(deployment_desktops(deployment))[:2]
    run(desktop_start, actor=klass.teacher, desktop=first)
    outcome = run(
        deployment_recreate,
        actor=klass.teacher,
        deployment=deployment,
        desktops=[first, second],
    )
    assert [d.pk for d, _ in outcome.refused] == [first.pk]
    assert [d.owner_id for d in outcome.changed] == [second.owner_id]
    assert len(deployment_desktops(deployment)) == 4


def test_delete_all_is_refused_while_running_then_recycles_everything(
    run: Any, klass: Campus, test_hypervisor: Any, base_template: Any
) -> None:
    deployment = deploy(run, klass, base_template)
    run(deployment_start, actor=klass.teacher, deployment=deployment)
    with pytest.raises(ConflictError, match="Stop the deployment"):
        deployment_delete(actor=klass.teacher, deployment=deployment)
    assert statuses(deployment) == [S.STARTED] * 4
    run(deployment_stop, actor=klass.teacher, deployment=deployment, force=True)
    ids = list(deployment_desktops(deployment).values_list("pk", flat=True))
    run(deployment_delete, actor=klass.teacher, deployment=deployment)
    deployment.refresh_from_db()
    assert deployment.deleted_at is not None
    assert set(Desktop.objects.filter(pk__in=ids).values_list("status", flat=True)) == {S.DELETED}
    with pytest.raises(ConflictError, match="recycle bin"):
        deployment_start(actor=klass.teacher, deployment=deployment)
