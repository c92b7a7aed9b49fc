"""API: desktops. Two people of each role, in two schools; objects one may not see are 404."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
from rest_framework.response import Response

from accounts.models import User
from desktops.choices import DesktopStatus
from desktops.models import Deployment, Desktop, DesktopEvent
from isard.core.api.errors import api_exception_handler
from isard.core.errors import NoCapacityError, QuotaExceededError
from isard.core.tasks import send_task
from tests.campus import Campus, assert_error, client_for, ids

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("clean_throttles")]

S = DesktopStatus


def url(desktop: Desktop, action: str = "") -> str:
    return f"/api/v1/desktops/{desktop.pk}/" + (f"{action}/" if action else "")


def test_a_student_sees_and_acts_on_their_own_desktop_only(north: Campus) -> None:
    client = client_for(north.student)
    assert ids(client.get("/api/v1/desktops/")) == {north.student_desktop.pk}
    theirs = north.other_student_desktop
    assert_error(client.get(url(theirs)), 404)
    for action in ("start", "stop", "shutdown", "reset", "restore", "viewer"):
        assert_error(client.post(url(theirs, action)), 404)
    assert_error(client.get(url(theirs, "events")), 404)
    assert_error(client.get(url(theirs, "viewer.vv")), 404)
    assert_error(client.delete(url(theirs)), 404)
    theirs.refresh_from_db()
    assert theirs.status == S.STOPPED
    assert not theirs.events.exists()


def test_a_teacher_reaches_their_courses_desktops_and_not_another_teachers(
    north: Campus,
) -> None:
    client = client_for(north.teacher)
    assert ids(client.get("/api/v1/desktops/")) == {north.student_desktop.pk}
    response = client.post(url(north.student_desktop, "start"))
    assert response.status_code == 202, response.content
    assert response.json()["status"] == S.STARTING
    assert_error(client.post(url(north.other_student_desktop, "start")), 404)
    other = client_for(north.other_teacher)
    assert ids(other.get("/api/v1/desktops/")) == {north.other_student_desktop.pk}
    assert_error(other.get(url(north.student_desktop)), 404)


def test_a_manager_reaches_their_school_and_not_another(north: Campus, south: Campus) -> None:
    client = client_for(north.manager)
    listed = ids(client.get("/api/v1/desktops/"))
    assert listed == {north.student_desktop.pk, north.other_student_desktop.pk}
    assert_error(client.get(url(south.student_desktop)), 404)
    assert_error(client.post(url(south.student_desktop, "start")), 404)
    south_manager = client_for(south.manager)
    assert_error(south_manager.get(url(north.student_desktop)), 404)


def test_an_admin_sees_every_school(north: Campus, south: Campus, admin: User) -> None:
    listed = ids(client_for(admin).get("/api/v1/desktops/?page_size=100"))
    assert {north.student_desktop.pk, south.other_student_desktop.pk} <= listed


def test_start_answers_202_with_the_status_and_schedules_the_start(
    north: Campus, django_capture_on_commit_callbacks: Any
) -> None:
    client = client_for(north.student)
    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(url(north.student_desktop, "start"))
    assert response.status_code == 202
    body = response.json()
    assert body["id"] == north.student_desktop.pk
    assert body["status"] == S.STARTING and body["status_label"] == "Starting"
    sent = [c.args[0].name for c in callbacks if isinstance(c, partial) and c.func is send_task]
    assert "desktops.tasks.start_desktop" in sent


def test_wrong_state_is_409_with_the_current_status(north: Campus) -> None:
    client = client_for(north.student)
    body = assert_error(client.post(url(north.student_desktop, "shutdown")), 409)
    assert body["extra"]["status"] == S.STOPPED
    assert_error(client.post(url(north.student_desktop, "reset")), 409)
    assert_error(client.post(url(north.student_desktop, "restore")), 409)
    body = assert_error(client.post(url(north.student_desktop, "viewer")), 409)
    assert body["extra"]["reason"] == "not-running"
    assert_error(client.get(url(north.student_desktop, "viewer.vv")), 409)


def test_only_the_owner_opens_the_viewer(north: Campus) -> None:
    Desktop.objects.filter(pk=north.student_desktop.pk).update(status=S.STARTED)
    body = assert_error(client_for(north.teacher).post(url(north.student_desktop, "viewer")), 403)
    assert body["extra"]["reason"] == "not-owner"


def test_delete_goes_to_the_recycle_bin_with_202(north: Campus) -> None:
    client = client_for(north.student)
    response = client.delete(url(north.student_desktop))
    assert response.status_code == 202
    assert response.json()["status"] == S.DELETING
    Desktop.objects.filter(pk=north.student_desktop.pk).update(status=S.DELETED)
    assert ids(client.get("/api/v1/desktops/?in_recycle_bin=true")) == {north.student_desktop.pk}
    assert ids(client.get("/api/v1/desktops/?in_recycle_bin=false")) == set()
    restored = client.post(url(north.student_desktop, "restore"))
    assert restored.status_code == 200 and restored.json()["status"] == S.STOPPED


def test_create_from_a_shared_template_answers_202_creating(
    north: Campus, base_template: Any
) -> None:
    client = client_for(north.student)
    response = client.post(
        "/api/v1/desktops/", {"template": base_template.pk, "name": "  Lab 1 "}, format="json"
    )
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == S.CREATING and body["name"] == "Lab 1"
    assert body["owner"] == north.student.pk


def test_create_from_a_template_not_shared_with_me_is_404(north: Campus) -> None:
    client = client_for(north.student)
    template = north.other_teacher_template  # shared with the other course only
    response = client.post("/api/v1/desktops/", {"template": template.pk, "name": "x"})
    assert_error(response, 404)
    assert not Desktop.objects.filter(name="x").exists()


def test_bad_input_names_the_fields(north: Campus) -> None:
    response = client_for(north.student).post("/api/v1/desktops/", {"name": ""})
    body = assert_error(response, 400)
    assert "name" in body["extra"]["fields"]
    response = client_for(north.student).post("/api/v1/desktops/", {"name": "x"})
    body = assert_error(response, 400)
    assert "either a template or install media" in str(body["extra"]["fields"])
    assert_error(client_for(north.student).get("/api/v1/desktops/?status=flying"), 400)


def test_events_are_the_desktops_own(north: Campus) -> None:
    client = client_for(north.student)
    client.post(url(north.student_desktop, "start"))
    DesktopEvent.objects.create(desktop=north.other_student_desktop, to_status=S.STOPPED)
    events = client.get(url(north.student_desktop, "events")).json()["results"]
    assert [(e["from_status"], e["to_status"]) for e in events] == [(S.STOPPED, S.STARTING)]
    assert events[0]["actor_username"] == north.student.username


def test_filtering_ordering_and_pagination(north: Campus) -> None:
    client = client_for(north.manager)
    Desktop.objects.filter(pk=north.student_desktop.pk).update(status=S.FAILED)
    assert ids(client.get("/api/v1/desktops/?status=failed")) == {north.student_desktop.pk}
    assert ids(client.get(f"/api/v1/desktops/?course={north.other_course.pk}")) == {
        north.other_student_desktop.pk
    }
    names = [d["name"] for d in client.get("/api/v1/desktops/?ordering=-name").json()["results"]]
    assert names == sorted(names, reverse=True)
    page = client.get("/api/v1/desktops/?page_size=1&ordering=id").json()
    assert page["count"] == 2 and len(page["results"]) == 1 and page["next"]
    assert_error(client.get("/api/v1/desktops/?page=99"), 404)


def test_filtering_by_someone_elses_id_tells_nothing_about_it(north: Campus, south: Campus) -> None:
    client = client_for(north.student)
    stranger, nobody = south.student.pk, 10**9
    assert ids(client.get(f"/api/v1/desktops/?owner={stranger}")) == set()
    assert ids(client.get(f"/api/v1/desktops/?owner={nobody}")) == set()
    assert ids(client.get(f"/api/v1/desktops/?course={south.course.pk}")) == set()
    assert_error(client.get(f"/api/v1/desktops/?owner={2**70}"), 400)


def test_desktop_operations_are_rate_limited_per_person(north: Campus, settings: Any) -> None:
    rates = {**settings.ISARD_API_THROTTLE_RATES, "desktop_action": "2/minute"}
    settings.ISARD_API_THROTTLE_RATES = rates
    client = client_for(north.student)
    assert client.post(url(north.student_desktop, "start")).status_code == 202
    assert client.post(url(north.student_desktop, "start")).status_code == 202
    body = assert_error(client.post(url(north.student_desktop, "stop")), 429)
    assert body["extra"]["retry_after"] > 0
    # Reading is not an operation, and another person has their own count.
    assert client.get(url(north.student_desktop)).status_code == 200
    assert client_for(north.teacher).post(url(north.student_desktop, "start")).status_code == 202


def test_a_hidden_deployment_hides_the_desktop_from_its_student_only(north: Campus) -> None:
    deployment = Deployment.objects.create(
        name="Exam",
        course=north.course,
        template=north.teacher_template,
        owner=north.teacher,
        visible=False,
    )
    Desktop.objects.filter(pk=north.student_desktop.pk).update(deployment=deployment)
    student = client_for(north.student)
    assert ids(student.get("/api/v1/desktops/")) == set()
    assert_error(student.post(url(north.student_desktop, "start")), 404)
    assert ids(client_for(north.teacher).get("/api/v1/desktops/")) == {north.student_desktop.pk}
    Deployment.objects.filter(pk=deployment.pk).update(visible=True)
    assert ids(student.get("/api/v1/desktops/")) == {north.student_desktop.pk}


@pytest.mark.parametrize(
    ("error", "status_code"),
    [
        (QuotaExceededError("Over quota.", extra={"quota": "desktops"}), 422),
        (NoCapacityError("Full."), 503),
    ],
)
def test_quota_and_capacity_errors_have_their_status_and_the_shape(
    error: Exception, status_code: int
) -> None:
    response = api_exception_handler(error, {})
    assert isinstance(response, Response)
    assert response.status_code == status_code
    assert set(response.data) == {"message", "extra"}


def test_a_teacher_installs_a_desktop_from_media_and_a_student_cannot(north: Campus) -> None:
    from templates_app.choices import MediaStatus
    from templates_app.models import Media

    media = Media.objects.create(name="debian.iso", path="/isos/d.iso", status=MediaStatus.READY)
    body = {"media": media.pk, "hardware": north.hardware.pk, "name": "Install"}
    response = client_for(north.teacher).post("/api/v1/desktops/", body, format="json")
    assert response.status_code == 202, response.content
    assert response.json()["status"] == S.CREATING and response.json()["template"] is None
    assert_error(client_for(north.student).post("/api/v1/desktops/", body, format="json"), 404)
    both = {**body, "template": north.teacher_template.pk}
    assert_error(client_for(north.teacher).post("/api/v1/desktops/", both, format="json"), 400)


def test_ids_beyond_a_64_bit_key_are_bad_input_not_a_crash(north: Campus) -> None:
    client = client_for(north.teacher)
    huge = 2**70
    body = assert_error(
        client.post("/api/v1/desktops/", {"template": huge, "name": "x"}, format="json"), 400
    )
    assert "template" in body["extra"]["fields"]
    deployment = {"name": "x", "course": north.course.pk, "template": 1, "students": [huge]}
    assert_error(client.post("/api/v1/deployments/", deployment, format="json"), 400)
    assert_error(client.get(f"/api/v1/desktops/{huge}/"), 404)


def test_the_owner_gets_a_single_use_viewer_token_for_a_running_desktop(north: Campus) -> None:
    from desktops.models import ViewerToken
    from desktops.viewer.services import hash_token
    from hypervisors.tests.factories import HypervisorFactory

    Desktop.objects.filter(pk=north.student_desktop.pk).update(
        status=S.STARTED, hypervisor=HypervisorFactory.create(), graphics_password="pw123456"
    )
    response = client_for(north.student).post(url(north.student_desktop, "viewer"))
    assert response.status_code == 200, response.content
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    # The proxy signs in to the display itself: the graphics password never leaves it.
    assert "password" not in body and "pw123456" not in response.content.decode()
    assert body["desktop"] == north.student_desktop.pk
    token = body["path"].removeprefix("/ws/viewer/").strip("/")
    stored = ViewerToken.objects.get(key_hash=hash_token(token))
    assert stored.user == north.student and stored.used_at is None


def test_a_students_list_costs_three_queries_however_many_desktops_they_have(
    north: Campus, django_assert_max_num_queries: Any
) -> None:
    """The list the dashboard and the mobile client poll: the session, the person with
    their school, the desktops (no count for a short page, no query per desktop)."""
    client = client_for(north.student, token=False)
    for desktops in (1, 6):
        while north.student.desktops.count() < desktops:
            Desktop.objects.create(
                name="more", owner=north.student, course=north.course, hardware=north.hardware
            )
        with django_assert_max_num_queries(3):
            assert len(ids(client.get("/api/v1/desktops/"))) == desktops


def test_a_list_that_names_no_filter_builds_no_filterset(
    north: Campus, monkeypatch: pytest.MonkeyPatch
) -> None:
    from desktops.api.views import DesktopFilter

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a FilterSet was built")

    client = client_for(north.student)
    monkeypatch.setattr(DesktopFilter, "__init__", refuse)
    listed = client.get("/api/v1/desktops/?page_size=10&ordering=-name&search=desk")
    assert ids(listed) == {north.student_desktop.pk}
    with pytest.raises(AssertionError, match="FilterSet"):
        client.get("/api/v1/desktops/?status=stopped")
    monkeypatch.undo()
    assert_error(client.get("/api/v1/desktops/?status="), 400)  # named, so checked
    assert ids(client.get("/api/v1/desktops/?status=failed")) == set()
    assert_error(client.get("/api/v1/desktops/?course=abc"), 400)
