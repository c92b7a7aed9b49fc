"""Teachers in the Django admin: two teachers of one school each see and act on only their
own courses, templates, desktops, deployments and media; students stay out."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from accounts.choices import CourseRole
from accounts.models import EnrolmentCode, User
from desktops.choices import DesktopStatus
from desktops.models import Deployment, Desktop
from hypervisors.tests.factories import HypervisorFactory
from templates_app.choices import TemplateStatus
from templates_app.models import Media
from tests.campus import Campus

pytestmark = pytest.mark.django_db


def signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def change_url(obj: Any) -> str:
    meta = obj._meta
    return reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk])


def changelist_url(model: type[Any]) -> str:
    meta = model._meta
    return reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist")


def page(client: Client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, url
    return response.content.decode()


def deployment_of(teacher: User, campus: Campus, course: Any, student: User) -> Deployment:
    deployment = Deployment.objects.create(
        name=f"{teacher.username} lab",
        course=course,
        template=campus.teacher_template
        if teacher == campus.teacher
        else campus.other_teacher_template,
        owner=teacher,
    )
    Desktop.objects.filter(owner=student, course=course).update(deployment=deployment)
    return deployment


@pytest.fixture
def labs(north: Campus) -> tuple[Deployment, Deployment]:
    return (
        deployment_of(north.teacher, north, north.course, north.student),
        deployment_of(north.other_teacher, north, north.other_course, north.other_student),
    )


@pytest.fixture
def media(north: Campus) -> tuple[Media, Media]:
    return (
        Media.objects.create(name="teacher iso", owner=north.teacher, path="/x/t1.iso"),
        Media.objects.create(name="teacher2 iso", owner=north.other_teacher, path="/x/t2.iso"),
    )


def test_a_teacher_without_the_staff_flag_signs_in_to_the_admin(north: Campus) -> None:
    """Teachers made by the directory have no `is_staff`: the role lets them in."""
    assert not north.teacher.is_staff
    client = Client()

    response = client.post(
        reverse("admin:login"), {"username": "north-teacher", "password": "password"}
    )

    assert response.status_code == 302
    assert north.course.name in page(client, "/admin/accounts/course/")


def test_a_student_cannot_sign_in_to_the_admin(north: Campus) -> None:
    client = Client()
    response = client.post(
        reverse("admin:login"), {"username": "north-student", "password": "password"}
    )
    assert response.status_code == 200 and "_auth_user_id" not in client.session
    assert signed_in(north.student).get("/admin/").status_code == 302


@pytest.mark.parametrize(
    ("mine", "theirs"),
    [
        ("course", "other_course"),
        ("teacher_template", "other_teacher_template"),
        ("student_desktop", "other_student_desktop"),
    ],
)
def test_each_teacher_lists_and_opens_only_their_own(north: Campus, mine: str, theirs: str) -> None:
    pairs = ((north.teacher, mine, theirs), (north.other_teacher, theirs, mine))
    for teacher, own, other in pairs:
        client = signed_in(teacher)
        own_row, other_row = getattr(north, own), getattr(north, other)
        listing = page(client, changelist_url(type(own_row)))
        assert str(own_row) in listing and str(other_row) not in listing
        assert client.get(change_url(own_row)).status_code == 200
        refused = client.get(change_url(other_row))
        assert refused.status_code == 302 and refused["Location"] == "/admin/"


def test_each_teacher_sees_only_the_deployments_they_own_or_co_teach(
    north: Campus, labs: tuple[Deployment, Deployment]
) -> None:
    mine, theirs = labs
    listing = page(signed_in(north.teacher), changelist_url(Deployment))
    assert mine.name in listing and theirs.name not in listing
    theirs.co_teachers.add(north.teacher)
    assert theirs.name in page(signed_in(north.teacher), changelist_url(Deployment))
    assert mine.name not in page(signed_in(north.other_teacher), changelist_url(Deployment))


def test_each_teacher_sees_only_their_own_media(north: Campus, media: tuple[Media, Media]) -> None:
    listing = page(signed_in(north.teacher), changelist_url(Media))
    assert "teacher iso" in listing and "teacher2 iso" not in listing
    # Media are for looking at: no form to change a path on disk.
    assert 'name="path"' not in page(signed_in(north.teacher), change_url(media[0]))


@pytest.mark.parametrize(
    "url",
    [
        "/admin/accounts/user/",
        "/admin/accounts/school/",
        "/admin/accounts/quota/",
        "/admin/accounts/ldapgroupmapping/",
        "/admin/accounts/schooldirectory/",
        "/admin/hypervisors/hypervisor/",
        "/admin/hypervisors/storagepool/",
        "/admin/templates_app/hardwareprofile/",
    ],
)
def test_teachers_see_nothing_of_people_schools_quotas_hosts_or_the_directory(
    north: Campus, url: str
) -> None:
    assert signed_in(north.teacher).get(url).status_code == 403


def test_a_teachers_admin_index_names_none_of_the_other_teachers_things(
    north: Campus, labs: tuple[Deployment, Deployment]
) -> None:
    index = page(signed_in(north.teacher), "/admin/")
    assert "Deployments" in index and "Courses" in index
    assert "Users" not in index and "Hypervisors" not in index


def test_the_course_page_shows_members_read_only_and_the_codes(north: Campus) -> None:
    client = signed_in(north.teacher)
    EnrolmentCode.objects.create(course=north.course, role=CourseRole.STUDENT, code="ABCD2345")
    body = page(client, change_url(north.course))
    assert "north-student" in body and "ABCD-2345" in body
    assert 'name="memberships-0-user"' not in body  # no form to enrol or remove anyone
    assert 'name="name"' not in body
    assert client.post(change_url(north.course), {"name": "renamed"}).status_code == 403


def test_a_teacher_regenerates_and_disables_only_their_own_courses_codes(north: Campus) -> None:
    client = signed_in(north.teacher)
    response = client.post(
        changelist_url(type(north.course)),
        {
            "action": "new_student_codes",
            "_selected_action": [north.course.pk, north.other_course.pk],
        },
    )
    assert response.status_code == 302
    assert EnrolmentCode.objects.filter(course=north.course, enabled=True).count() == 1
    assert not EnrolmentCode.objects.filter(course=north.other_course).exists()

    client.post(
        changelist_url(type(north.course)),
        {"action": "disable_codes", "_selected_action": [north.course.pk]},
    )
    assert not EnrolmentCode.objects.get(course=north.course).enabled


def template_form(template: Any, **fields: Any) -> dict[str, Any]:
    return {
        "name": template.name,
        "description": template.description,
        "shared_courses": [c.pk for c in template.shared_courses.all()],
        "shared_users": [u.pk for u in template.shared_users.all()],
        **fields,
    }


def test_a_teacher_renames_and_shares_a_template_with_their_course_and_students(
    north: Campus,
) -> None:
    template = north.teacher_template
    client = signed_in(north.teacher)
    form = page(client, change_url(template))
    assert north.other_course.name not in form and "north-student2" not in form

    response = client.post(
        change_url(template),
        template_form(
            template,
            name="Networks lab",
            description="Bring a cable.",
            shared_courses=[north.course.pk],
            shared_users=[north.student.pk],
            shared_with_everyone="on",  # read-only for teachers: ignored
        ),
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    template.refresh_from_db()
    assert (template.name, template.description) == ("Networks lab", "Bring a cable.")
    assert list(template.shared_users.all()) == [north.student]
    assert not template.shared_with_everyone


def test_a_teacher_cannot_share_with_another_teachers_course(north: Campus) -> None:
    template = north.teacher_template
    response = signed_in(north.teacher).post(
        change_url(template), template_form(template, shared_courses=[north.other_course.pk])
    )
    assert response.status_code == 200  # the form again, with the error
    assert "Select a valid choice" in response.content.decode()
    assert list(template.shared_courses.all()) == [north.course]


def test_a_teacher_moves_their_template_to_the_recycle_bin_and_back(north: Campus) -> None:
    client = signed_in(north.teacher)
    url = changelist_url(type(north.teacher_template))
    selected = [north.teacher_template.pk, north.other_teacher_template.pk]

    client.post(url, {"action": "recycle", "_selected_action": selected})

    north.teacher_template.refresh_from_db()
    north.other_teacher_template.refresh_from_db()
    assert north.teacher_template.status == TemplateStatus.DELETED
    assert north.other_teacher_template.status == TemplateStatus.READY
    client.post(url, {"action": "restore", "_selected_action": [north.teacher_template.pk]})
    north.teacher_template.refresh_from_db()
    assert north.teacher_template.status == TemplateStatus.READY
    # No hard delete for teachers: the recycle bin is theirs, purging is the task's.
    assert client.get(url).content.decode().count('value="delete_selected"') == 0


def test_a_teacher_hides_and_shows_their_deployment_from_the_admin(
    north: Campus, labs: tuple[Deployment, Deployment]
) -> None:
    mine, theirs = labs
    client = signed_in(north.teacher)
    action = "deployment_hide_from_the_students__shuts_their_desktops_down_"
    assert f'value="{action}"' in page(client, changelist_url(Deployment))

    client.post(
        changelist_url(Deployment), {"action": action, "_selected_action": [mine.pk, theirs.pk]}
    )

    mine.refresh_from_db()
    theirs.refresh_from_db()
    assert not mine.visible and theirs.visible
    detail = page(client, change_url(mine))
    assert "north-student" in detail and "north-student desktop" in detail


def test_a_started_students_desktop_links_to_a_view_only_look_and_hides_its_password(
    north: Campus,
) -> None:
    desktop = north.student_desktop
    Desktop.objects.filter(pk=desktop.pk).update(
        status=DesktopStatus.STARTED, hypervisor=HypervisorFactory.create(), graphics_password="s3"
    )
    client = signed_in(north.teacher)
    viewer = reverse("desktop-viewer", args=[desktop.pk])
    assert viewer in page(client, changelist_url(Desktop))
    detail = page(client, change_url(desktop))
    assert viewer in detail and "graphics_password" not in detail
    assert 'name="name"' not in detail  # teachers act through the actions, not the form


def test_a_teacher_starts_only_their_courses_desktops_from_the_admin(north: Campus) -> None:
    client = signed_in(north.teacher)
    client.post(
        changelist_url(Desktop),
        {
            "action": "action_start",
            "_selected_action": [north.student_desktop.pk, north.other_student_desktop.pk],
        },
    )
    north.student_desktop.refresh_from_db()
    north.other_student_desktop.refresh_from_db()
    assert north.student_desktop.status == DesktopStatus.STARTING
    assert north.other_student_desktop.status == DesktopStatus.STOPPED


def test_a_teacher_makes_a_template_of_their_own_stopped_desktop_only(north: Campus) -> None:
    own = Desktop.objects.create(
        name="my prepared desktop",
        owner=north.teacher,
        hardware=north.hardware,
        status=DesktopStatus.STOPPED,
    )
    client = signed_in(north.teacher)

    client.post(
        changelist_url(Desktop),
        {"action": "make_template", "_selected_action": [own.pk, north.student_desktop.pk]},
    )

    own.refresh_from_db()
    north.student_desktop.refresh_from_db()
    assert own.status == DesktopStatus.CREATING_TEMPLATE
    assert north.student_desktop.status == DesktopStatus.STOPPED  # only the owner's own
    assert north.teacher.templates.filter(name__startswith="my prepared desktop (").exists()


def test_only_an_administrator_shares_a_template_with_everyone_from_the_admin(
    north: Campus, admin: User
) -> None:
    template = north.teacher_template
    form = template_form(
        template,
        owner=north.teacher.pk,
        hardware=north.hardware.pk,
        progress_percent=0,
        shared_with_everyone="on",
    )
    by_manager = signed_in(north.manager).post(change_url(template), form)
    assert by_manager.status_code == 302, by_manager.content.decode()[:3000]
    template.refresh_from_db()
    assert not template.shared_with_everyone  # read-only for them: the field was ignored

    by_admin = signed_in(admin).post(change_url(template), form)
    assert by_admin.status_code == 302, by_admin.content.decode()[:3000]
    template.refresh_from_db()
    assert template.shared_with_everyone
