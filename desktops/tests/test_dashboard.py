"""The student's dashboard: only my desktops, actions through the services, clear refusals."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

from accounts.choices import CourseRole, Role
from accounts.tests.factories import MembershipFactory, UserFactory
from desktops.choices import DesktopStatus
from desktops.models import Desktop
from desktops.services.deployments import deployment_create, deployment_set_visible
from desktops.services.provisioning import desktop_create

S = DesktopStatus
JSON = {"Accept": "application/json"}


@pytest.fixture
def student() -> Any:
    return UserFactory.create(username="ana", role=Role.STUDENT)


@pytest.fixture
def other_student() -> Any:
    return UserFactory.create(username="bea", role=Role.STUDENT)


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def shared_template(base_template: Any) -> Any:
    base_template.shared_with_everyone = True
    base_template.save()
    return base_template


@pytest.fixture
def desktop(run: Any, test_hypervisor: Any, shared_template: Any, student: Any) -> Desktop:
    created = run(desktop_create, actor=student, template=shared_template, name="Mine")
    created.refresh_from_db()
    return created


@pytest.mark.django_db
def test_signed_out_visitors_are_sent_to_sign_in() -> None:
    response = Client().get("/")
    assert response.status_code == 302
    assert "login" in response["Location"]


@pytest.mark.django_db
def test_dashboard_shows_my_desktops_only_with_the_actions_their_status_allows(
    run: Any, desktop: Desktop, student: Any, other_student: Any, shared_template: Any
) -> None:
    theirs = run(desktop_create, actor=other_student, template=shared_template, name="Theirs")
    page = client_for(student).get("/").content.decode()
    assert f'id="desktop-{desktop.pk}"' in page
    assert f'id="desktop-{theirs.pk}"' not in page
    assert 'data-status="stopped"' in page
    assert ">Start</button>" in page and 'noopener">Open in the browser' not in page
    assert shared_template.name in page  # offered in "New desktop"


@pytest.mark.django_db
def test_student_creates_a_desktop_from_a_shared_template(
    django_capture_on_commit_callbacks: Any,
    test_hypervisor: Any,
    shared_template: Any,
    student: Any,
) -> None:
    with django_capture_on_commit_callbacks(execute=False):
        response = client_for(student).post(
            "/desktops/new/", {"template": shared_template.pk, "name": "Essay"}, headers=JSON
        )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["desktop"]["name"] == "Essay"
    assert body["desktop"]["status"] == S.CREATING
    assert Desktop.objects.get(pk=body["desktop"]["id"]).owner == student


@pytest.mark.django_db
def test_a_template_not_shared_with_me_is_refused_with_a_clear_message(
    base_template: Any, student: Any
) -> None:
    base_template.shared_with_everyone = False
    base_template.save()
    response = client_for(student).post(
        "/desktops/new/", {"template": base_template.pk}, headers=JSON
    )
    assert response.status_code == 400
    assert "shared with you" in response.json()["message"]
    assert not Desktop.objects.exists()


@pytest.mark.django_db
def test_start_through_the_dashboard_answers_202_and_the_task_starts_it(
    run: Any, desktop: Desktop, student: Any
) -> None:
    response = run(client_for(student).post, f"/desktops/{desktop.pk}/start/", headers=JSON)
    assert response.status_code == 202
    assert response.json()["desktop"]["status"] == S.STARTING
    desktop.refresh_from_db()
    assert desktop.status == S.STARTED


@pytest.mark.django_db
def test_student_cannot_act_on_another_students_desktop(
    desktop: Desktop, other_student: Any
) -> None:
    for action in ("start", "delete", "stop", "shutdown", "restore"):
        response = client_for(other_student).post(f"/desktops/{desktop.pk}/{action}/", headers=JSON)
        assert response.status_code == 404, action
    desktop.refresh_from_db()
    assert desktop.status == S.STOPPED


@pytest.mark.django_db
def test_a_refused_action_says_why_and_changes_nothing(desktop: Desktop, student: Any) -> None:
    response = client_for(student).post(f"/desktops/{desktop.pk}/restore/", headers=JSON)
    assert response.status_code == 409
    assert "not in the recycle bin" in response.json()["message"]


@pytest.mark.django_db
def test_delete_then_restore_from_the_recycle_bin_without_javascript(
    run: Any, desktop: Desktop, student: Any
) -> None:
    client = client_for(student)
    response = run(client.post, f"/desktops/{desktop.pk}/delete/")
    assert response.status_code == 302  # a plain form: back to the dashboard, with a message
    desktop.refresh_from_db()
    assert desktop.status == S.DELETED
    page = client.get("/").content.decode()
    assert "Recycle bin" in page and "went to the recycle bin" in page
    assert ">Restore</button>" in page
    run(client.post, f"/desktops/{desktop.pk}/restore/")
    desktop.refresh_from_db()
    assert desktop.status == S.STOPPED


@pytest.mark.django_db
def test_viewer_page_is_still_reachable_next_to_the_action_routes(
    desktop: Desktop, student: Any
) -> None:
    # The action routes must not swallow /desktops/<id>/viewer/ (a GET page).
    response = client_for(student).get(f"/desktops/{desktop.pk}/viewer/")
    assert response.status_code != 405


@pytest.fixture
def course(student: Any) -> Any:
    from accounts.choices import CourseRole
    from accounts.tests.factories import CourseFactory, MembershipFactory

    course = CourseFactory.create(name="Latin 1A", school=student.school)
    teacher = UserFactory.create(username="tess", role=Role.TEACHER, school=student.school)
    MembershipFactory.create(course=course, user=teacher, role=CourseRole.TEACHER)
    MembershipFactory.create(course=course, user=student)
    return course


def teacher_of(course: Any) -> Any:
    return course.memberships.get(role="teacher").user


@pytest.mark.django_db
def test_teacher_sees_the_class_and_starts_a_students_desktop(
    run: Any, desktop: Desktop, course: Any, student: Any
) -> None:
    Desktop.objects.filter(pk=desktop.pk).update(course=course)
    teacher = client_for(teacher_of(course))
    assert "Latin 1A" in teacher.get("/courses/").content.decode()
    page = teacher.get(f"/courses/{course.pk}/").content.decode()
    assert f'id="desktop-{desktop.pk}"' in page and "ana" in page
    assert f"/ws/desktops/?course={course.pk}" in page
    assert f'href="/accounts/#course-{course.pk}">Enrolment codes' in page
    response = run(teacher.post, f"/desktops/{desktop.pk}/start/", headers=JSON)
    assert response.status_code == 202
    desktop.refresh_from_db()
    assert desktop.status == S.STARTED
    # The owner's viewers are the owner's: the teacher's card offers the view-only look
    # at the screen, not "Open in the browser" or the .vv file.
    page = teacher.get(f"/courses/{course.pk}/").content.decode()
    assert "Force off" in page and "data-foreign" in page
    assert "Look at the screen (view only)" in page
    assert "Open in the browser</a>" not in page
    assert f"/desktops/{desktop.pk}/viewer.vv" not in page
    own = client_for(desktop.owner).get("/").content.decode()
    assert f'href="/desktops/{desktop.pk}/viewer/"' in own and "data-foreign" not in own


@pytest.mark.django_db
def test_my_courses_counts_each_courses_students_desktops_and_running_ones(
    desktop: Desktop, course: Any, student: Any, other_student: Any
) -> None:
    MembershipFactory.create(user=other_student, course=course, role=CourseRole.STUDENT)
    Desktop.objects.filter(pk=desktop.pk).update(course=course, status=S.STARTED)
    listing = client_for(teacher_of(course)).get("/courses/").content.decode()
    row = listing[listing.index("Latin 1A") :]
    row = row[: row.index("</tr>")]
    cells = [cell.split(">", 1)[1].split("<", 1)[0] for cell in row.split("<td")[1:]]
    # school, students, desktops, running: the teacher's own membership is no student
    assert cells[1:] == ["2", "1", "1"], row


@pytest.mark.django_db
def test_the_pages_link_to_the_course_pages_not_to_the_api(
    desktop: Desktop, course: Any, student: Any
) -> None:
    """The API's router also names routes "course-list" and "course-detail": the pages'
    links once led a teacher from "My courses" into the API's browsable JSON."""
    teacher = client_for(teacher_of(course))
    listing = teacher.get("/courses/").content.decode()
    assert f'href="/courses/{course.pk}/"' in listing
    assert 'href="/courses/"' in listing  # the navigation's "My courses"
    assert "/api/v1/courses/" not in listing
    page = teacher.get(f"/courses/{course.pk}/").content.decode()
    assert 'href="/courses/"' in page and "/api/v1/courses/" not in page


@pytest.mark.django_db
def test_another_teacher_and_the_students_cannot_open_a_course_page(
    desktop: Desktop, course: Any, student: Any
) -> None:
    stranger = UserFactory.create(username="otto", role=Role.TEACHER, school=student.school)
    for person in (stranger, student):
        assert client_for(person).get(f"/courses/{course.pk}/").status_code == 404
        assert "Latin 1A" not in client_for(person).get("/courses/").content.decode()
    response = client_for(stranger).post(f"/desktops/{desktop.pk}/stop/", headers=JSON)
    assert response.status_code == 404


@pytest.mark.django_db
def test_the_school_manager_sees_every_course_of_the_school_only(course: Any, student: Any) -> None:
    from accounts.tests.factories import CourseFactory

    manager = UserFactory.create(username="mia", role=Role.MANAGER, school=student.school)
    elsewhere = CourseFactory.create(name="Elsewhere 2B")
    listing = client_for(manager).get("/courses/").content.decode()
    assert "Latin 1A" in listing and "Elsewhere 2B" not in listing
    assert client_for(manager).get(f"/courses/{elsewhere.pk}/").status_code == 404


@pytest.mark.django_db
def test_teacher_makes_a_template_of_their_stopped_desktop_from_the_dashboard(
    run: Any, test_hypervisor: Any, shared_template: Any
) -> None:
    from templates_app.choices import TemplateStatus
    from templates_app.models import Template

    teacher = UserFactory.create(username="tom", role=Role.TEACHER)
    desktop = run(desktop_create, actor=teacher, template=shared_template, name="Lab")
    client = client_for(teacher)
    assert f"/desktops/{desktop.pk}/template/" in client.get("/").content.decode()
    assert client.get(f"/desktops/{desktop.pk}/template/").status_code == 200
    refused = client.post(f"/desktops/{desktop.pk}/template/", {"name": "  "})
    assert refused.status_code == 400 and "needs a name" in refused.content.decode()
    response = run(client.post, f"/desktops/{desktop.pk}/template/", {"name": "Lab v2"})
    assert response.status_code == 302
    template = Template.objects.get(name="Lab v2")
    assert template.status == TemplateStatus.READY and template.parent == shared_template
    desktop.refresh_from_db()
    assert desktop.status == S.STOPPED and desktop.disk.parent == template.disk


@pytest.mark.django_db
def test_students_are_not_offered_templates_and_cannot_make_one(
    desktop: Desktop, student: Any
) -> None:
    client = client_for(student)
    assert f"/desktops/{desktop.pk}/template/" not in client.get("/").content.decode()
    refused = client.post(f"/desktops/{desktop.pk}/template/", {"name": "Mine"})
    assert refused.status_code == 403 and "Only teachers" in refused.content.decode()


@pytest.mark.django_db
def test_a_hidden_deployment_disappears_from_the_students_dashboard_and_actions(
    run: Any, test_hypervisor: Any, shared_template: Any, course: Any, student: Any
) -> None:

    teacher = teacher_of(course)
    deployment, [desktop] = run(
        deployment_create,
        actor=teacher,
        course=course,
        template=shared_template,
        name="Exam",
        visible=False,
    )
    client = client_for(student)
    assert f'id="desktop-{desktop.pk}"' not in client.get("/").content.decode()
    assert client.post(f"/desktops/{desktop.pk}/start/", headers=JSON).status_code == 404
    refused = client.get(f"/desktops/{desktop.pk}/viewer/")
    assert refused.status_code == 403 and "hidden" in refused.content.decode()
    # The teacher still reaches it from the course page.
    assert (
        f'id="desktop-{desktop.pk}"'
        in client_for(teacher).get(f"/courses/{course.pk}/").content.decode()
    )
    run(deployment_set_visible, actor=teacher, deployment=deployment, visible=True)
    assert f'id="desktop-{desktop.pk}"' in client.get("/").content.decode()


@pytest.mark.django_db
def test_teacher_deploys_from_the_course_page_and_drives_the_whole_class(
    run: Any, test_hypervisor: Any, shared_template: Any, course: Any, student: Any
) -> None:
    from accounts.tests.factories import MembershipFactory
    from desktops.models import Deployment

    MembershipFactory.create(course=course, user=UserFactory.create(username="bob"))
    teacher = client_for(teacher_of(course))
    response = run(
        teacher.post,
        f"/courses/{course.pk}/deploy/",
        {"template": shared_template.pk, "name": "Lab 1", "visible": "on"},
    )
    assert response.status_code == 302
    deployment = Deployment.objects.get(name="Lab 1")
    desktops = Desktop.objects.filter(deployment=deployment)
    assert sorted(d.owner.username for d in desktops) == ["ana", "bob"]
    assert all(d.status == S.STOPPED for d in desktops)
    page = teacher.get(f"/courses/{course.pk}/").content.decode()
    assert "Lab 1" in page and "Start all" in page

    run(teacher.post, f"/deployments/{deployment.pk}/start/")
    assert all(d.status == S.STARTED for d in Desktop.objects.filter(deployment=deployment))
    refused = teacher.post(f"/deployments/{deployment.pk}/delete/", follow=True)
    assert "running" in refused.content.decode().lower()
    run(teacher.post, f"/deployments/{deployment.pk}/stop/")
    run(teacher.post, f"/deployments/{deployment.pk}/hide/")
    deployment.refresh_from_db()
    assert not deployment.visible
    done = run(teacher.post, f"/deployments/{deployment.pk}/delete/", follow=True)
    assert "moved to the recycle bin" in done.content.decode()


@pytest.mark.django_db
def test_another_teacher_cannot_drive_a_deployment_or_deploy_to_a_course_not_theirs(
    run: Any, test_hypervisor: Any, shared_template: Any, course: Any, student: Any
) -> None:

    deployment, _ = run(
        deployment_create,
        actor=teacher_of(course),
        course=course,
        template=shared_template,
        name="Lab",
    )
    stranger = client_for(
        UserFactory.create(username="otto", role=Role.TEACHER, school=student.school)
    )
    assert stranger.post(f"/deployments/{deployment.pk}/start/").status_code == 404
    response = stranger.post(f"/courses/{course.pk}/deploy/", {"template": shared_template.pk})
    assert response.status_code == 404
    assert Desktop.objects.filter(status=S.STARTING).count() == 0


def test_a_cards_reason_is_in_the_error_colour_only_when_its_status_is_an_error() -> None:
    from django.conf import settings

    css = re.sub(
        r"/\*.*?\*/",
        "",
        (settings.BASE_DIR / "static" / "isard" / "isard.css").read_text(),
        flags=re.S,
    )
    rules = {
        selector.strip(): body
        for block in css.split("}")
        if "{" in block
        for selector in block.split("{")[0].split(",")
        for body in [block.split("{")[1]]
    }
    assert "var(--error)" not in rules[".card .reason"]
    assert "var(--error)" in rules['.card[data-status="failed"] .reason']
    assert "var(--error)" in rules['.card[data-status="unknown"] .reason']
