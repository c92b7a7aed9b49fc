"""Direct links: who may make and revoke them, and what opening one does (on libvirt's
test driver, with real qemu-img disks: a stopped desktop really starts)."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser
from django.utils import timezone

from accounts.choices import CourseRole, Role
from accounts.models import CourseMembership, Quota
from accounts.tests.factories import UserFactory
from desktops.choices import DesktopStatus
from desktops.models import Deployment, Desktop, DesktopEvent, DirectLink, ViewerToken
from desktops.services.deployments import deployment_create
from desktops.viewer.checks import ViewerRefusedError, ViewerUnavailableError
from desktops.viewer.direct_links import (
    NOT_FOUND_MESSAGE,
    direct_link_create,
    direct_link_open,
    direct_link_resolve,
    direct_link_revoke,
    direct_link_viewer_access,
    direct_links_create_for_deployment,
    direct_links_revoke_for_deployment,
    direct_links_visible_to,
)
from desktops.viewer.services import hash_token, viewer_token_consume
from isard.core.errors import (
    ApplicationError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    TooManyRequestsError,
)
from tests.campus import Campus

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("clean_throttles")]

S = DesktopStatus


def token_of(path: str) -> str:
    assert path.startswith("/v/") and path.endswith("/")
    return path.removeprefix("/v/").removesuffix("/")


def reasons(desktop: Desktop) -> list[str]:
    return list(desktop.events.order_by("pk").values_list("reason", flat=True))


# --- making them --------------------------------------------------------------------------


def test_a_teacher_makes_a_link_and_only_a_hash_of_its_secret_is_stored(
    north: Campus, exam_desktop: Desktop, settings: Any
) -> None:
    settings.ISARD_DIRECT_LINK_HOURS = 5
    before = timezone.now()
    issued = direct_link_create(actor=north.teacher, desktop=exam_desktop)
    token = token_of(issued.path)
    link = DirectLink.objects.get()
    assert link.key_hash == hash_token(token) and token not in link.key_hash
    assert link.created_by == north.teacher and link.desktop == exam_desktop
    assert timedelta(hours=5) <= link.expires_at - before < timedelta(hours=5, minutes=1)
    assert link.uses == 0 and link.revoked_at is None and link.last_used_at is None
    assert reasons(exam_desktop)[-1].startswith(f"direct link {link.pk} made by north-teacher")
    assert token not in repr(issued)


def test_a_link_lives_between_one_hour_and_the_maximum(
    north: Campus, exam_desktop: Desktop, settings: Any
) -> None:
    settings.ISARD_DIRECT_LINK_MAX_HOURS = 48
    for hours in (0, 49):
        with pytest.raises(ApplicationError, match="between 1 and 48 hours"):
            direct_link_create(actor=north.teacher, desktop=exam_desktop, hours=hours)
    issued = direct_link_create(actor=north.teacher, desktop=exam_desktop, hours=48)
    assert issued.link.expires_at - issued.link.created_at == timedelta(hours=48)


@pytest.mark.parametrize("who", ["teacher", "manager"])
def test_the_courses_teacher_and_the_schools_manager_make_links(
    north: Campus, exam_desktop: Desktop, who: str
) -> None:
    issued = direct_link_create(actor=getattr(north, who), desktop=exam_desktop)
    assert issued.link.created_by == getattr(north, who)


def test_an_admin_makes_links(admin: Any, exam_desktop: Desktop) -> None:
    assert direct_link_create(actor=admin, desktop=exam_desktop).link.created_by == admin


def test_the_student_who_owns_the_desktop_is_refused_and_others_are_told_no_such_desktop(
    north: Campus, south: Campus, exam_desktop: Desktop
) -> None:
    with pytest.raises(PermissionDeniedError):
        direct_link_create(actor=north.student, desktop=exam_desktop)
    for stranger in (north.other_student, north.other_teacher, south.teacher, south.manager):
        with pytest.raises(NotFoundError):
            direct_link_create(actor=stranger, desktop=exam_desktop)
    assert not DirectLink.objects.exists()


def test_a_desktop_in_the_recycle_bin_gets_no_link(north: Campus, exam_desktop: Desktop) -> None:
    Desktop.objects.filter(pk=exam_desktop.pk).update(deleted_at=timezone.now(), status=S.DELETED)
    exam_desktop.refresh_from_db()
    with pytest.raises(ConflictError):
        direct_link_create(actor=north.teacher, desktop=exam_desktop)


def test_a_deployment_gets_one_link_per_students_desktop_ordered_by_student(
    run: Any, north: Campus, test_hypervisor: Any, base_template: Any
) -> None:
    for name in ("north-aaron", "north-zoe"):
        student = UserFactory.create(username=name, role=Role.STUDENT, school=north.school)
        CourseMembership.objects.create(course=north.course, user=student, role=CourseRole.STUDENT)
    deployment, _ = run(
        deployment_create,
        actor=north.teacher,
        course=north.course,
        template=base_template,
        name="Exam",
    )
    rows = direct_links_create_for_deployment(actor=north.teacher, deployment=deployment, hours=3)
    assert [row.username for row in rows] == ["north-aaron", "north-student", "north-zoe"]
    assert len({row.path for row in rows}) == 3
    links = DirectLink.objects.filter(pk__in=[row.link_id for row in rows])
    assert {link.desktop.owner.username for link in links} == {r.username for r in rows}
    assert all(row.expires_at == rows[0].expires_at for row in rows)


def test_another_teacher_and_a_student_cannot_make_a_deployments_links(
    north: Campus, south: Campus, exam: Deployment
) -> None:
    for stranger in (north.student, north.other_teacher, south.teacher, south.manager):
        with pytest.raises(NotFoundError):
            direct_links_create_for_deployment(actor=stranger, deployment=exam)
        with pytest.raises(NotFoundError):
            direct_links_revoke_for_deployment(actor=stranger, deployment=exam)
    assert not DirectLink.objects.exists()


# --- revoking them --------------------------------------------------------------------------


def test_revoking_a_link_is_recorded_once_and_a_student_may_not(
    north: Campus, exam_desktop: Desktop
) -> None:
    link = direct_link_create(actor=north.teacher, desktop=exam_desktop).link
    with pytest.raises(PermissionDeniedError):
        direct_link_revoke(actor=north.student, link=link)
    with pytest.raises(NotFoundError):
        direct_link_revoke(actor=north.other_teacher, link=link)
    assert direct_link_revoke(actor=north.manager, link=link) is True
    assert direct_link_revoke(actor=north.teacher, link=link) is False
    assert link.revoked_at is not None
    revoked = [r for r in reasons(exam_desktop) if "revoked" in r]
    assert revoked == [f"direct link {link.pk} revoked by north-manager"]


def test_revoking_a_deployments_links_revokes_only_its_live_ones(
    north: Campus, exam: Deployment, exam_desktop: Desktop
) -> None:
    direct_links_create_for_deployment(actor=north.teacher, deployment=exam)
    direct_links_create_for_deployment(actor=north.teacher, deployment=exam)
    elsewhere = direct_link_create(actor=north.teacher, desktop=north.student_desktop).link
    assert direct_links_revoke_for_deployment(actor=north.teacher, deployment=exam) == 2
    assert direct_links_revoke_for_deployment(actor=north.teacher, deployment=exam) == 0
    assert DirectLink.objects.filter(revoked_at__isnull=True).get() == elsewhere


def test_a_student_sees_no_links_and_a_teacher_only_those_of_their_courses(
    north: Campus, exam_desktop: Desktop
) -> None:
    mine = direct_link_create(actor=north.teacher, desktop=exam_desktop).link
    theirs = direct_link_create(actor=north.other_teacher, desktop=north.other_student_desktop).link
    assert not direct_links_visible_to(north.student).exists()
    assert list(direct_links_visible_to(north.teacher)) == [mine]
    assert set(direct_links_visible_to(north.manager)) == {mine, theirs}


# --- opening them -----------------------------------------------------------------------------


def test_opening_a_link_to_a_stopped_desktop_starts_it_and_then_the_viewer_connects(
    run: Any, north: Campus, exam_desktop: Desktop
) -> None:
    token = token_of(direct_link_create(actor=north.teacher, desktop=exam_desktop).path)

    opening = run(direct_link_open, token=token, client="192.0.2.7")

    assert opening.access is None and opening.status == S.STARTING
    exam_desktop.refresh_from_db()
    assert exam_desktop.status == S.STARTED  # the start task ran, on the test driver
    link = DirectLink.objects.get()
    assert link.uses == 1 and link.last_used_at is not None
    start = exam_desktop.events.get(to_status=S.STARTING)
    assert start.actor == north.teacher  # started on behalf of the link's maker
    assert any(
        r == f"opened through direct link {link.pk} (made by north-teacher) from 192.0.2.7"
        for r in reasons(exam_desktop)
    )

    again = direct_link_viewer_access(token=token, client="192.0.2.7")
    assert again.access is not None and again.status == S.STARTED
    assert DirectLink.objects.get().uses == 1  # asking again is no new use
    issued = ViewerToken.objects.get()
    assert issued.user == north.student and issued.direct_link == link and not issued.view_only

    # Whoever holds the link is not signed in: the token passes every check and the proxy
    # asks the desktop's hypervisor for the owner's screen. libvirt's test driver runs no
    # display, so the answer ends there (the integration test connects a real one).
    with pytest.raises(ViewerUnavailableError) as refused:
        viewer_token_consume(token=again.access.token, user=AnonymousUser(), client="192.0.2.7:5")
    assert refused.value.extra["reason"] == "no-display"
    assert ViewerToken.objects.get().used_at is not None
    assert f"browser viewer opened through direct link {link.pk}" not in " ".join(
        reasons(exam_desktop)
    )


def test_opening_a_link_to_a_running_desktop_gives_the_viewer_at_once(
    run: Any, north: Campus, exam_desktop: Desktop
) -> None:
    token = token_of(direct_link_create(actor=north.teacher, desktop=exam_desktop).path)
    run(direct_link_open, token=token)
    opening = run(direct_link_open, token=token)
    assert opening.access is not None and opening.status == S.STARTED
    assert DirectLink.objects.get().uses == 2
    assert run.sent.count("desktops.tasks.start_desktop") == 1


def test_a_refused_start_comes_back_with_its_reason_and_the_use_is_still_recorded(
    run: Any, north: Campus, exam_desktop: Desktop
) -> None:
    token = token_of(direct_link_create(actor=north.teacher, desktop=exam_desktop).path)
    Quota.objects.create(user=north.student, max_running=0)

    with pytest.raises(QuotaExceededError) as refused:
        run(direct_link_open, token=token)

    assert refused.value.status_code == 422 and refused.value.message
    exam_desktop.refresh_from_db()
    assert exam_desktop.status == S.STOPPED
    assert DirectLink.objects.get().uses == 1


def test_a_link_whose_desktop_is_missing_its_disk_says_so(
    run: Any, north: Campus, exam_desktop: Desktop
) -> None:
    token = token_of(direct_link_create(actor=north.teacher, desktop=exam_desktop).path)
    assert exam_desktop.disk is not None
    Path(exam_desktop.disk.path).unlink()
    with pytest.raises(ConflictError, match="cannot start"):
        run(direct_link_open, token=token)


def test_unknown_revoked_and_expired_links_all_answer_the_same_not_found(
    north: Campus, exam_desktop: Desktop, caplog: pytest.LogCaptureFixture
) -> None:
    revoked = direct_link_create(actor=north.teacher, desktop=exam_desktop)
    direct_link_revoke(actor=north.teacher, link=revoked.link)
    expired = direct_link_create(actor=north.teacher, desktop=exam_desktop)
    past = timezone.now() - timedelta(hours=2)
    DirectLink.objects.filter(pk=expired.link.pk).update(
        created_at=past, expires_at=past + timedelta(hours=1)
    )
    events = DesktopEvent.objects.count()
    answers = []
    with caplog.at_level(logging.WARNING, logger="desktops.viewer.direct_links"):
        for token in ("never-made", token_of(revoked.path), token_of(expired.path)):
            with pytest.raises(NotFoundError) as refused:
                direct_link_open(token=token, client="198.51.100.4")
            answers.append((refused.value.message, refused.value.extra, refused.value.status_code))
    assert answers == [(NOT_FOUND_MESSAGE, {}, 404)] * 3
    logged = [r.getMessage() for r in caplog.records]
    assert any("(unknown)" in line for line in logged)
    assert any(f"(revoked): link={revoked.link.pk}" in line for line in logged)
    assert any(f"(expired): link={expired.link.pk}" in line for line in logged)
    assert all("never-made" not in line for line in logged)  # no token in the log
    # The two links that existed have it in their desktop's history; nobody was started.
    assert DesktopEvent.objects.count() == events + 2
    assert reasons(exam_desktop)[-1] == (
        f"direct link {expired.link.pk} refused (expired) from 198.51.100.4"
    )
    assert DirectLink.objects.filter(uses__gt=0).count() == 0
    exam_desktop.refresh_from_db()
    assert exam_desktop.status == S.STOPPED


def test_a_link_stops_working_when_its_maker_no_longer_teaches_the_course(
    north: Campus, exam_desktop: Desktop
) -> None:
    token = token_of(direct_link_create(actor=north.teacher, desktop=exam_desktop).path)
    CourseMembership.objects.filter(user=north.teacher, course=north.course).delete()
    with pytest.raises(NotFoundError):
        direct_link_resolve(token=token)
    assert "(maker-no-longer-manages)" in reasons(exam_desktop)[-1]


def test_a_viewer_token_of_a_link_revoked_since_does_not_connect(
    run: Any, north: Campus, exam_desktop: Desktop
) -> None:
    issued = direct_link_create(actor=north.teacher, desktop=exam_desktop)
    token = token_of(issued.path)
    run(direct_link_open, token=token)
    access = direct_link_viewer_access(token=token).access
    assert access is not None
    direct_link_revoke(actor=north.teacher, link=issued.link)
    with pytest.raises(ViewerRefusedError) as refused:
        viewer_token_consume(token=access.token, user=AnonymousUser())
    assert refused.value.extra["reason"] == "direct-link-closed"


def test_asking_again_after_the_desktop_stopped_says_to_open_the_link_again(
    north: Campus, exam_desktop: Desktop
) -> None:
    token = token_of(direct_link_create(actor=north.teacher, desktop=exam_desktop).path)
    with pytest.raises(ConflictError, match="open the link again"):
        direct_link_viewer_access(token=token)


def test_wrong_links_from_one_address_are_limited_and_right_ones_do_not_count(
    north: Campus, exam_desktop: Desktop, settings: Any
) -> None:
    settings.ISARD_DIRECT_LINK_FAILURE_RATE = "3/minute"
    token = token_of(direct_link_create(actor=north.teacher, desktop=exam_desktop).path)
    for _ in range(5):
        direct_link_resolve(token=token, client="203.0.113.9")  # right: never counted
    for attempt in range(3):
        with pytest.raises(NotFoundError):
            direct_link_resolve(token=f"guess-{attempt}", client="203.0.113.9")
    with pytest.raises(TooManyRequestsError) as limited:
        direct_link_resolve(token=token, client="203.0.113.9")  # even a right one now
    assert limited.value.status_code == 429 and limited.value.extra["retry_after"] > 0
    assert direct_link_resolve(token=token, client="203.0.113.10").desktop == exam_desktop
