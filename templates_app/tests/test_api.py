"""API: templates (tree, sharing, dependants, recycle bin), hardware profiles and media."""

from __future__ import annotations

from typing import Any

import pytest

from accounts.models import User
from desktops.choices import DesktopStatus
from desktops.models import Desktop
from templates_app.choices import TemplateStatus
from templates_app.models import Media, Template
from tests.campus import Campus, assert_error, client_for, ids

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("clean_throttles")]


def url(template: Template, action: str = "") -> str:
    return f"/api/v1/templates/{template.pk}/" + (f"{action}/" if action else "")


def test_students_see_the_templates_shared_with_their_course_only(
    north: Campus, south: Campus
) -> None:
    client = client_for(north.student)
    assert ids(client.get("/api/v1/templates/")) == {north.teacher_template.pk}
    assert client.get(url(north.teacher_template)).json()["can_manage"] is False
    assert_error(client.get(url(north.other_teacher_template)), 404)
    assert_error(client.get(url(south.teacher_template)), 404)


def test_students_cannot_manage_a_template_shared_with_them(north: Campus) -> None:
    client = client_for(north.student)
    template = north.teacher_template
    assert_error(client.delete(url(template)), 403)
    assert_error(client.get(url(template, "dependants")), 403)
    assert_error(client.get(url(template, "sharing")), 403)
    assert_error(client.put(url(template, "sharing"), {"shared_users": []}, format="json"), 403)
    template.refresh_from_db()
    assert template.status == TemplateStatus.READY


def test_a_teacher_cannot_touch_another_teachers_template(north: Campus) -> None:
    client = client_for(north.teacher)
    theirs = north.other_teacher_template
    assert_error(client.get(url(theirs)), 404)
    assert_error(client.delete(url(theirs)), 404)
    assert_error(client.post(url(theirs, "restore")), 404)
    assert_error(client.put(url(theirs, "sharing"), {"shared_users": []}, format="json"), 404)


def test_a_manager_manages_their_schools_templates_and_not_another(
    north: Campus, south: Campus
) -> None:
    client = client_for(north.manager)
    listed = ids(client.get("/api/v1/templates/"))
    assert {north.teacher_template.pk, north.other_teacher_template.pk} <= listed
    assert south.teacher_template.pk not in listed
    assert client.get(url(north.other_teacher_template, "dependants")).status_code == 200
    assert_error(client.get(url(south.teacher_template, "dependants")), 404)


def test_delete_goes_to_the_recycle_bin_and_restore_brings_it_back(north: Campus) -> None:
    client = client_for(north.teacher)
    template = north.teacher_template
    response = client.delete(url(template))
    assert response.status_code == 200 and response.json()["status"] == TemplateStatus.DELETED
    # Out of the students' sight, still in the owner's list (to restore it).
    assert ids(client_for(north.student).get("/api/v1/templates/")) == set()
    assert template.pk in ids(client.get("/api/v1/templates/?status=deleted"))
    restored = client.post(url(template, "restore"))
    assert restored.status_code == 200 and restored.json()["status"] == TemplateStatus.READY
    assert_error(client.post(url(template, "restore")), 409)


def test_a_template_something_depends_on_cannot_be_deleted(north: Campus) -> None:
    template = north.teacher_template
    Desktop.objects.filter(pk=north.student_desktop.pk).update(template=template)
    client = client_for(north.teacher)
    body = assert_error(client.delete(url(template)), 409)
    assert body["extra"]["dependants"]["desktops"] == ["north-student desktop (north-student)"]
    dependants = client.get(url(template, "dependants")).json()
    assert dependants == {
        "desktops": ["north-student desktop (north-student)"],
        "templates": [],
        "deployments": [],
    }


def test_tree_shows_ancestors_and_the_children_one_may_see(north: Campus) -> None:
    root = north.teacher_template
    child = Template.objects.create(
        name="child",
        owner=north.teacher,
        parent=root,
        hardware=north.hardware,
        status=TemplateStatus.READY,
    )
    grandchild = Template.objects.create(
        name="grandchild",
        owner=north.teacher,
        parent=child,
        hardware=north.hardware,
        status=TemplateStatus.READY,
    )
    client = client_for(north.teacher)
    assert client.get(url(grandchild, "tree")).json() == {
        "ancestors": [{"id": root.pk, "name": root.name}, {"id": child.pk, "name": "child"}],
        "children": [],
    }
    assert client.get(url(root, "tree")).json()["children"] == [{"id": child.pk, "name": "child"}]
    # The student sees the shared root, not its unshared child.
    assert client_for(north.student).get(url(root, "tree")).json()["children"] == []


def test_sharing_with_my_students_and_courses_but_not_with_everyone_or_strangers(
    north: Campus, south: Campus
) -> None:
    client = client_for(north.teacher)
    template = north.teacher_template
    response = client.put(
        url(template, "sharing"),
        {"shared_users": [north.student.pk], "shared_courses": [north.course.pk]},
        format="json",
    )
    assert response.status_code == 200, response.content
    assert response.json() == {
        "shared_with_everyone": False,
        "shared_courses": [north.course.pk],
        "shared_users": [north.student.pk],
    }
    assert_error(client.put(url(template, "sharing"), {"shared_with_everyone": True}), 403)
    body = assert_error(
        client.put(url(template, "sharing"), {"shared_users": [south.student.pk]}, format="json"),
        400,
    )
    assert body["extra"]["users"] == [south.student.pk]
    assert_error(
        client.put(url(template, "sharing"), {"shared_courses": [999999]}, format="json"), 400
    )


def test_make_a_template_from_my_stopped_desktop_answers_202(
    north: Campus, base_template: Any
) -> None:
    desktop = Desktop.objects.create(
        name="mine",
        owner=north.teacher,
        hardware=north.hardware,
        template=base_template,
        status=DesktopStatus.STOPPED,
    )
    client = client_for(north.teacher)
    response = client.post(
        "/api/v1/templates/", {"desktop": desktop.pk, "name": "Lab image"}, format="json"
    )
    assert response.status_code == 202, response.content
    assert response.json()["status"] == TemplateStatus.CREATING
    assert response.json()["parent"] == base_template.pk
    desktop.refresh_from_db()
    assert desktop.status == DesktopStatus.CREATING_TEMPLATE


def test_nobody_makes_a_template_from_someone_elses_desktop(north: Campus) -> None:
    student_desktop = north.student_desktop
    response = client_for(north.other_teacher).post(
        "/api/v1/templates/", {"desktop": student_desktop.pk, "name": "x"}, format="json"
    )
    assert_error(response, 404)
    # Their teacher sees the desktop but may not take its disk.
    response = client_for(north.teacher).post(
        "/api/v1/templates/", {"desktop": student_desktop.pk, "name": "x"}, format="json"
    )
    assert_error(response, 403)


def test_media_are_for_teachers_shared_or_their_own(north: Campus, admin: User) -> None:
    shared = Media.objects.create(name="debian.iso", path="/isos/debian.iso")
    own = Media.objects.create(name="mine.iso", path="/isos/mine.iso", owner=north.teacher)
    theirs = Media.objects.create(name="t.iso", path="/isos/t.iso", owner=north.other_teacher)
    assert ids(client_for(north.teacher).get("/api/v1/media/")) == {shared.pk, own.pk}
    assert_error(client_for(north.teacher).get(f"/api/v1/media/{theirs.pk}/"), 404)
    assert ids(client_for(north.student).get("/api/v1/media/")) == set()
    assert ids(client_for(admin).get("/api/v1/media/")) == {shared.pk, own.pk, theirs.pk}


def test_hardware_profiles_are_listed(north: Campus) -> None:
    assert north.hardware.pk in ids(client_for(north.student).get("/api/v1/hardware-profiles/"))
