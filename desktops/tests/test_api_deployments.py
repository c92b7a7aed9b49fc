"""API: deployments. Teachers and managers of two schools; others' deployments are 404."""

from __future__ import annotations

from typing import Any

import pytest

from accounts.choices import CourseRole, Role
from accounts.models import User
from accounts.tests.factories import MembershipFactory, UserFactory
from desktops.choices import DesktopStatus
from desktops.models import Deployment, Desktop
from desktops.services.deployments import deployment_create
from tests.campus import Campus, assert_error, client_for, ids

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("clean_throttles")]

S = DesktopStatus


def make(campus: Campus, template: Any) -> Deployment:
    deployment, _ = deployment_create(
        actor=campus.teacher, course=campus.course, template=template, name="Lab"
    )
    return deployment


def url(deployment: Deployment, action: str = "") -> str:
    return f"/api/v1/deployments/{deployment.pk}/" + (f"{action}/" if action else "")


def test_a_teacher_deploys_to_their_course_in_one_request(
    north: Campus, base_template: Any
) -> None:
    client = client_for(north.teacher)
    response = client.post(
        "/api/v1/deployments/",
        {"name": "Lab 1", "course": north.course.pk, "template": base_template.pk},
        format="json",
    )
    assert response.status_code == 202, response.content
    body = response.json()
    assert [d["owner"] for d in body["changed"]] == [north.student.pk]
    assert body["changed"][0]["status"] == S.CREATING
    assert body["deployment"]["desktop_count"] == 1 and body["refused"] == []
    desktop = Desktop.objects.get(pk=body["changed"][0]["id"])
    assert desktop.deployment_id == body["deployment"]["id"]


def test_a_teacher_cannot_deploy_to_or_see_another_teachers_course_or_deployment(
    north: Campus, base_template: Any
) -> None:
    mine = make(north, base_template)
    other = client_for(north.other_teacher)
    response = other.post(
        "/api/v1/deployments/",
        {"name": "x", "course": north.course.pk, "template": base_template.pk},
        format="json",
    )
    assert_error(response, 404)  # not one of their courses
    assert ids(other.get("/api/v1/deployments/")) == set()
    assert_error(other.get(url(mine)), 404)
    for action in ("start", "stop", "hide", "show", "recreate", "create-missing"):
        assert_error(other.post(url(mine, action), {}, format="json"), 404)
    assert_error(other.delete(url(mine)), 404)
    assert_error(other.put(url(mine, "co-teachers"), {"co_teachers": []}, format="json"), 404)
    mine.refresh_from_db()
    assert mine.visible and mine.deleted_at is None


def test_a_student_sees_no_deployment_and_cannot_deploy(north: Campus, base_template: Any) -> None:
    deployment = make(north, base_template)
    client = client_for(north.student)
    assert ids(client.get("/api/v1/deployments/")) == set()
    assert_error(client.get(url(deployment)), 404)
    response = client.post(
        "/api/v1/deployments/",
        {"name": "x", "course": north.course.pk, "template": base_template.pk},
        format="json",
    )
    assert_error(response, 403)


def test_a_manager_sees_their_schools_deployments_only(
    north: Campus, south: Campus, base_template: Any
) -> None:
    here, there = make(north, base_template), make(south, base_template)
    client = client_for(north.manager)
    assert ids(client.get("/api/v1/deployments/")) == {here.pk}
    assert_error(client.get(url(there)), 404)
    assert_error(client.post(url(there, "start")), 404)
    assert client.post(url(here, "hide")).status_code == 202


def test_hide_and_show_and_the_students_list(north: Campus, base_template: Any) -> None:
    deployment = make(north, base_template)
    Desktop.objects.filter(deployment=deployment).update(status=S.STOPPED)
    teacher, student = client_for(north.teacher), client_for(north.student)
    before = ids(student.get("/api/v1/desktops/"))
    response = teacher.post(url(deployment, "hide"))
    assert response.status_code == 202 and response.json()["deployment"]["visible"] is False
    after = ids(student.get("/api/v1/desktops/"))
    assert before - after == set(
        Desktop.objects.filter(deployment=deployment).values_list("pk", flat=True)
    )
    assert teacher.post(url(deployment, "show")).json()["deployment"]["visible"] is True
    assert ids(student.get("/api/v1/desktops/")) == before


def test_start_all_reports_what_it_changed_and_what_it_refused(
    north: Campus, base_template: Any
) -> None:
    deployment = make(north, base_template)
    Desktop.objects.filter(deployment=deployment).update(status=S.STOPPED)
    response = client_for(north.teacher).post(url(deployment, "start"))
    assert response.status_code == 202
    body = response.json()
    assert [d["status"] for d in body["changed"]] == [S.STARTING]
    assert body["refused"] == []
    listed = client_for(north.teacher).get(url(deployment, "desktops")).json()["results"]
    assert [d["status"] for d in listed] == [S.STARTING]


def test_delete_all_while_running_is_409(north: Campus, base_template: Any) -> None:
    deployment = make(north, base_template)
    Desktop.objects.filter(deployment=deployment).update(status=S.STARTED)
    body = assert_error(client_for(north.teacher).delete(url(deployment)), 409)
    assert len(body["extra"]["desktops"]) == 1
    Desktop.objects.filter(deployment=deployment).update(status=S.STOPPED)
    response = client_for(north.teacher).delete(url(deployment))
    assert response.status_code == 202
    assert response.json()["deployment"]["deleted_at"] is not None
    assert ids(client_for(north.teacher).get("/api/v1/deployments/?deleted=true")) == {
        deployment.pk
    }


def test_co_teachers_must_teach_the_course(north: Campus, base_template: Any) -> None:
    deployment = make(north, base_template)
    client = client_for(north.teacher)
    response = client.put(
        url(deployment, "co-teachers"), {"co_teachers": [north.other_teacher.pk]}, format="json"
    )
    # The teacher cannot see a colleague who teaches none of their courses: no such person.
    body = assert_error(response, 400)
    assert body["extra"]["users"] == [north.other_teacher.pk]
    # The school's manager sees everyone in it, and is told who does not teach the course.
    response = client_for(north.manager).put(
        url(deployment, "co-teachers"), {"co_teachers": [north.other_teacher.pk]}, format="json"
    )
    assert assert_error(response, 400)["extra"]["users"] == [north.other_teacher.username]
    colleague: User = UserFactory.create(
        username="north-colleague", role=Role.TEACHER, school=north.school
    )
    MembershipFactory.create(course=north.course, user=colleague, role=CourseRole.TEACHER)
    response = client.put(
        url(deployment, "co-teachers"), {"co_teachers": [colleague.pk]}, format="json"
    )
    assert response.status_code == 200 and response.json()["co_teachers"] == [colleague.pk]
    assert client_for(colleague).get(url(deployment)).status_code == 200


def test_rename(north: Campus, base_template: Any) -> None:
    deployment = make(north, base_template)
    response = client_for(north.teacher).patch(url(deployment), {"name": " Exam "}, format="json")
    assert response.status_code == 200 and response.json()["name"] == "Exam"
    assert_error(
        client_for(north.teacher).patch(url(deployment), {"name": " "}, format="json"), 400
    )


def test_other_schools_people_are_no_such_people_and_never_named(
    north: Campus, south: Campus, base_template: Any
) -> None:
    """Ids of people one may not see get the answer free ids get: their ids, no names."""
    deployment = make(north, base_template)
    client = client_for(north.teacher)
    strangers = [south.teacher.pk, south.student.pk, south.manager.pk]
    free = max(User.objects.values_list("pk", flat=True)) + 1000
    for ids_sent in (strangers, [free]):
        body = assert_error(
            client.put(url(deployment, "co-teachers"), {"co_teachers": ids_sent}, format="json"),
            400,
        )
        assert body == {"message": "No such people.", "extra": {"users": sorted(ids_sent)}}
        created = {
            "name": "x",
            "course": north.course.pk,
            "template": base_template.pk,
            "students": ids_sent,
        }
        body = assert_error(client.post("/api/v1/deployments/", created, format="json"), 400)
        assert body == {"message": "No such people.", "extra": {"users": sorted(ids_sent)}}
    for person in (south.teacher, south.student, south.manager):
        assert person.username not in str(body)
    assert Deployment.objects.count() == 1
