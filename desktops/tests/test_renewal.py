"""Back to the template: resets (the earlier disk to the bin, and back), volatile desktops
(deployments and pools) that start over when they stop or their student signs out."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.services.courses import course_update_settings
from desktops.choices import DesktopStatus
from desktops.models import Deployment, Desktop, DesktopEvent, EarlierDisk, Pool
from desktops.pools.services import pool_take
from desktops.services.deployments import deployment_create, deployment_update
from desktops.services.lifecycle import desktop_start, desktop_stop
from desktops.services.reconciliation import desktops_recover_stuck
from desktops.services.recycle_bin import desktop_purge, desktops_purge_expired
from desktops.services.renewal import (
    desktop_put_back,
    desktop_reset_to_template,
    desktops_shut_down_on_sign_out,
)
from hypervisors.choices import DiskStatus
from hypervisors.drivers import libvirt_driver
from hypervisors.models import Disk
from isard.core.errors import ConflictError, NotFoundError, PermissionDeniedError
from tests.campus import Campus, assert_error, client_for

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("clean_throttles")]

S = DesktopStatus


def _disk(desktop: Desktop) -> Disk:
    desktop.refresh_from_db()
    assert desktop.disk is not None
    return desktop.disk


def test_a_teacher_resets_a_desktop_and_the_earlier_disk_waits_in_the_bin(
    run: Any, exam_desktop: Desktop, north: Campus
) -> None:
    before = _disk(exam_desktop)
    run(desktop_reset_to_template, actor=north.teacher, desktop=exam_desktop)
    exam_desktop.refresh_from_db()
    after = _disk(exam_desktop)
    assert exam_desktop.status == S.STOPPED
    assert "earlier disk is in the recycle bin" in exam_desktop.status_reason
    # A fresh overlay on the template's disk; the old file is kept, in the bin.
    assert exam_desktop.template is not None
    assert after.pk != before.pk and after.parent_id == exam_desktop.template.disk_id
    assert Path(after.path).exists() and Path(before.path).exists()
    before.refresh_from_db()
    assert before.status == DiskStatus.RECYCLED
    earlier = EarlierDisk.objects.get(desktop=exam_desktop)
    assert earlier.disk_id == before.pk
    statuses = list(
        DesktopEvent.objects.filter(desktop=exam_desktop)
        .order_by("pk")
        .values_list("to_status", "actor")
    )
    assert (S.RESETTING, north.teacher.pk) in statuses and statuses[-1][0] == S.STOPPED

    # Put back: the earlier disk is the desktop's again, the reset's one goes to the bin.
    run(desktop_put_back, actor=north.teacher, desktop=exam_desktop)
    assert _disk(exam_desktop).pk == before.pk
    before.refresh_from_db()
    assert before.status == DiskStatus.READY
    assert list(
        EarlierDisk.objects.filter(desktop=exam_desktop).values_list("disk", flat=True)
    ) == [after.pk]


def test_students_reset_only_where_their_course_allows(
    run: Any, exam_desktop: Desktop, north: Campus
) -> None:
    with pytest.raises(PermissionDeniedError, match="not allowed"):
        desktop_reset_to_template(actor=north.student, desktop=exam_desktop)
    assert _disk(exam_desktop) and not EarlierDisk.objects.exists()
    with pytest.raises(NotFoundError):
        course_update_settings(actor=north.student, course=north.course, students_may_reset=True)
    course_update_settings(actor=north.teacher, course=north.course, students_may_reset=True)
    exam_desktop.refresh_from_db()
    run(desktop_reset_to_template, actor=north.student, desktop=exam_desktop)
    assert EarlierDisk.objects.filter(desktop=exam_desktop).count() == 1
    # Another class's student does not see the desktop at all.
    api = client_for(north.other_student)
    assert_error(api.post(f"/api/v1/desktops/{exam_desktop.pk}/reset-to-template/"), 404)


def test_a_running_desktop_is_refused_and_a_guest_still_running_is_never_touched(
    run: Any, exam_desktop: Desktop, north: Campus
) -> None:
    run(desktop_start, actor=north.teacher, desktop=exam_desktop)
    exam_desktop.refresh_from_db()
    assert exam_desktop.status == S.STARTED
    with pytest.raises(ConflictError, match="Shut down"):
        desktop_reset_to_template(actor=north.teacher, desktop=exam_desktop)
    # The database says failed, but the guest runs on its host: the task asks libvirt first.
    Desktop.objects.filter(pk=exam_desktop.pk).update(status=S.FAILED)
    exam_desktop.refresh_from_db()
    disk = _disk(exam_desktop)
    run(desktop_reset_to_template, actor=north.teacher, desktop=exam_desktop)
    exam_desktop.refresh_from_db()
    assert exam_desktop.status == S.FAILED and "still running" in exam_desktop.status_reason
    assert _disk(exam_desktop).pk == disk.pk and not EarlierDisk.objects.exists()
    assert exam_desktop.hypervisor is not None
    uri = exam_desktop.hypervisor.uri
    assert libvirt_driver.domain_state(uri, exam_desktop.domain_name) == "running"


def test_a_desktop_installed_from_media_has_no_template_to_go_back_to(
    exam_desktop: Desktop, north: Campus
) -> None:
    Desktop.objects.filter(pk=exam_desktop.pk).update(template=None)
    exam_desktop.refresh_from_db()
    with pytest.raises(ConflictError, match="no template"):
        desktop_reset_to_template(actor=north.teacher, desktop=exam_desktop)


@pytest.fixture
def kiosk(run: Any, north: Campus, test_hypervisor: Any, base_template: Any) -> Deployment:
    """A volatile deployment to north's first class."""
    deployment, _ = run(
        deployment_create,
        actor=north.teacher,
        course=north.course,
        template=base_template,
        name="Kiosk",
        volatile=True,
    )
    return deployment


def test_a_volatile_deployment_starts_over_at_every_stop(
    run: Any, kiosk: Deployment, north: Campus, base_template: Any
) -> None:
    deployment = kiosk
    desktop = Desktop.objects.get(deployment=deployment, owner=north.student)
    assert desktop.volatile
    first = _disk(desktop)
    run(desktop_start, actor=north.student, desktop=desktop)
    desktop.refresh_from_db()
    run(desktop_stop, actor=north.student, desktop=desktop)
    desktop.refresh_from_db()
    assert desktop.status == S.STOPPED and "volatile" in desktop.status_reason
    second = _disk(desktop)
    assert second.pk != first.pk and second.parent_id == base_template.disk_id
    # Nothing was kept: the old overlay is gone, file and row.
    assert not Path(first.path).exists() and not Disk.objects.filter(pk=first.pk).exists()
    assert not EarlierDisk.objects.exists()
    # Persistent again: the next stop keeps the disk.
    run(deployment_update, actor=north.teacher, deployment=deployment, volatile=False)
    desktop.refresh_from_db()
    run(desktop_start, actor=north.student, desktop=desktop)
    desktop.refresh_from_db()
    run(desktop_stop, actor=north.student, desktop=desktop)
    assert _disk(desktop).pk == second.pk
    assert not Deployment.objects.get(pk=deployment.pk).volatile


def test_a_volatile_pool_takes_its_desktop_back_for_the_next_student(
    run: Any, north: Campus, one_running_pool: Any
) -> None:
    pool = one_running_pool(volatile=True)
    desktop = run(pool_take, actor=north.student, pool=pool)
    desktop.refresh_from_db()
    assert desktop.status == S.STARTED and desktop.owner == north.student
    first = _disk(desktop)
    run(desktop_stop, actor=north.student, desktop=desktop)
    desktop.refresh_from_db()
    assert desktop.owner == north.teacher and desktop.pool_taken_at is None
    assert _disk(desktop).pk != first.pk and not Path(first.path).exists()
    assert Pool.objects.get(pk=pool.pk).volatile


def test_signing_out_shuts_down_the_volatile_desktops(
    run: Any, kiosk: Deployment, north: Campus
) -> None:
    desktop = Desktop.objects.get(deployment=kiosk, owner=north.student)
    run(desktop_start, actor=north.student, desktop=desktop)
    persistent = north.student_desktop  # not volatile: it runs on
    Desktop.objects.filter(pk=persistent.pk).update(status=S.STARTED)
    browser = Client()
    browser.force_login(north.student)
    assert browser.post(reverse("accounts:sign-out")).status_code in (200, 302)
    desktop.refresh_from_db()
    persistent.refresh_from_db()
    assert desktop.status == S.SHUTTING_DOWN  # then stopped, then back to the template
    assert persistent.status == S.STARTED  # a persistent desktop runs on
    assert run(desktops_shut_down_on_sign_out, user=north.student) == 0


def test_the_bin_purges_earlier_disks_after_the_retention_and_with_their_desktop(
    run: Any, exam_desktop: Desktop, north: Campus
) -> None:
    old = _disk(exam_desktop)
    run(desktop_reset_to_template, actor=north.teacher, desktop=exam_desktop)
    later = timezone.now() + timedelta(days=400)
    assert desktops_purge_expired(now=later) == 1
    assert not Path(old.path).exists() and not EarlierDisk.objects.exists()
    # A desktop purged from the bin takes its earlier disks along.
    exam_desktop.refresh_from_db()
    run(desktop_reset_to_template, actor=north.teacher, desktop=exam_desktop)
    earlier = EarlierDisk.objects.get(desktop=exam_desktop).disk
    current = _disk(exam_desktop)
    Desktop.objects.filter(pk=exam_desktop.pk).update(status=S.DELETED)
    exam_desktop.refresh_from_db()
    desktop_purge(desktop=exam_desktop)
    assert not Path(earlier.path).exists() and not Path(current.path).exists()
    assert not Disk.objects.filter(pk__in=[earlier.pk, current.pk]).exists()


def test_a_reset_whose_worker_died_is_failed_with_a_reason(
    exam_desktop: Desktop, north: Campus
) -> None:
    Desktop.objects.filter(pk=exam_desktop.pk).update(
        status=S.RESETTING, status_changed_at=timezone.now() - timedelta(hours=1)
    )
    assert desktops_recover_stuck() == 1
    exam_desktop.refresh_from_db()
    assert exam_desktop.status == S.FAILED and "did not finish" in exam_desktop.status_reason
    # From failed, a reset is the way out.
    assert exam_desktop.disk is not None


def test_the_api_resets_lists_and_puts_back(
    run: Any, exam_desktop: Desktop, north: Campus, south: Campus
) -> None:
    api = client_for(north.teacher)
    url = f"/api/v1/desktops/{exam_desktop.pk}"
    with run.capture(execute=False) as callbacks:
        response = api.post(f"{url}/reset-to-template/")
    assert response.status_code == 202 and response.json()["status"] == S.RESETTING
    run.process(callbacks)
    listed = api.get(f"{url}/earlier-disks/").json()["results"]
    assert len(listed) == 1 and set(listed[0]) == {"id", "put_aside_at", "size_bytes", "purge_at"}
    assert_error(api.post(f"{url}/put-back/", {"earlier_disk": 0}, format="json"), 400)
    assert_error(api.post(f"{url}/put-back/", {"earlier_disk": 999999}, format="json"), 404)
    with run.capture(execute=False) as callbacks:
        response = api.post(f"{url}/put-back/", {"earlier_disk": listed[0]["id"]}, format="json")
    assert response.status_code == 202
    run.process(callbacks)
    assert api.get(f"{url}/").json()["status"] == S.STOPPED
    # The student (course does not allow it): 403; another school: 404.
    assert_error(client_for(north.student).post(f"{url}/reset-to-template/"), 403)
    assert_error(client_for(south.teacher).get(f"{url}/earlier-disks/"), 404)


def test_cards_offer_the_reset_where_it_is_allowed(
    run: Any, exam_desktop: Desktop, north: Campus
) -> None:
    student = Client()
    student.force_login(north.student)
    assert "Reset to the template" not in student.get(reverse("dashboard")).content.decode()
    teacher = Client()
    teacher.force_login(north.teacher)
    page = teacher.get(reverse("course-page", args=[north.course.pk])).content.decode()
    assert "Reset to the template" in page
    response = teacher.post(
        reverse("course-settings", args=[north.course.pk]), {"students_may_reset": "on"}
    )
    assert response.status_code == 302
    assert "Reset to the template" in student.get(reverse("dashboard")).content.decode()
    with run.capture(execute=False) as callbacks:
        response = student.post(
            reverse("desktop-action", args=[exam_desktop.pk, "reset-to-template"]),
            headers={"Accept": "application/json"},
        )
    assert response.status_code == 202, response.content
    run.process(callbacks)
    page = student.get(reverse("dashboard")).content.decode()
    assert "Put back the disk of" in page
