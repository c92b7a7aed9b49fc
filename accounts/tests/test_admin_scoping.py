"""The Django admin for two school managers of two schools: each sees and edits only theirs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from accounts.choices import CourseRole, Role
from accounts.models import Course, EnrolmentCode, LdapAccount, Quota, School, User
from accounts.services.passwords import user_password_reset
from accounts.tests.factories import CourseFactory, MembershipFactory, SchoolFactory, UserFactory
from desktops.choices import DesktopStatus
from desktops.models import Desktop
from hypervisors.tests.factories import HypervisorFactory
from isard.core.errors import ConflictError, PermissionDeniedError
from templates_app.models import Media, Template
from templates_app.tests.factories import HardwareProfileFactory

pytestmark = pytest.mark.django_db


@dataclass
class Campus:
    school: School
    manager: User
    student: User
    course: Course
    desktop: Desktop
    template: Template
    media: Media
    quota: Quota
    client: Client


def campus(slug: str) -> Campus:
    school = SchoolFactory.create(name=slug.capitalize(), slug=slug)
    # Not staff: a manager made by the directory's role groups reaches the admin anyway.
    manager = UserFactory.create(username=f"{slug}-manager", role=Role.MANAGER, school=school)
    teacher = UserFactory.create(username=f"{slug}-teacher", role=Role.TEACHER, school=school)
    student = UserFactory.create(username=f"{slug}-student", school=school)
    course = CourseFactory.create(school=school, name=f"{slug}-course")
    MembershipFactory.create(course=course, user=teacher, role=CourseRole.TEACHER)
    MembershipFactory.create(course=course, user=student)
    hardware = HardwareProfileFactory.create()
    client = Client()
    client.force_login(manager)
    return Campus(
        school=school,
        manager=manager,
        student=student,
        course=course,
        desktop=Desktop.objects.create(
            name=f"{slug}-desktop", owner=student, hardware=hardware, status=DesktopStatus.STOPPED
        ),
        template=Template.objects.create(name=f"{slug}-template", owner=teacher, hardware=hardware),
        media=Media.objects.create(name=f"{slug}-media", owner=teacher, path=f"/x/{slug}.iso"),
        quota=Quota.objects.create(school=school, max_running=1),
        client=client,
    )


@pytest.fixture
def north() -> Campus:
    return campus("north")


@pytest.fixture
def south() -> Campus:
    return campus("south")


def change_url(obj: Any) -> str:
    meta = obj._meta
    return reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk])


def changelist(client: Client, model: str) -> str:
    response = client.get(f"/admin/{model}/")
    assert response.status_code == 200, model
    return response.content.decode()


@pytest.mark.parametrize(
    ("model", "attribute"),
    [
        ("accounts/user", "student"),
        ("accounts/course", "course"),
        ("accounts/quota", "quota"),
        ("desktops/desktop", "desktop"),
        ("templates_app/template", "template"),
        ("templates_app/media", "media"),
    ],
)
def test_each_manager_lists_and_opens_only_their_schools_rows(
    north: Campus, south: Campus, model: str, attribute: str
) -> None:
    for mine, theirs in ((north, south), (south, north)):
        page = changelist(mine.client, model)
        assert str(getattr(mine, attribute)) in page
        assert str(getattr(theirs, attribute)) not in page
        assert mine.client.get(change_url(getattr(mine, attribute))).status_code == 200
        other = mine.client.get(change_url(getattr(theirs, attribute)))
        assert other.status_code == 302  # "does not exist", like a wrong id
        assert other["Location"] == "/admin/"


def test_filters_and_choices_do_not_show_another_schools_names(
    north: Campus, south: Campus
) -> None:
    courses_filter = changelist(north.client, "desktops/desktop")
    assert south.course.name not in courses_filter
    form = north.client.get(reverse("admin:accounts_course_add")).content.decode()
    assert north.school.name in form
    assert south.school.name not in form
    quota_form = north.client.get(reverse("admin:accounts_quota_add")).content.decode()
    assert south.school.name not in quota_form


def user_form(user: User, **changes: Any) -> dict[str, Any]:
    data = {
        "username": user.username,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "email": user.email,
        "is_active": "on",
        "date_joined_0": user.date_joined.strftime("%Y-%m-%d"),
        "date_joined_1": user.date_joined.strftime("%H:%M:%S"),
        "role": user.role,
        "school": user.school_id or "",
    }
    data.update(changes)
    return {key: value for key, value in data.items() if value is not None}


def test_a_manager_edits_their_schools_people(north: Campus) -> None:
    response = north.client.post(
        change_url(north.student), user_form(north.student, first_name="Ada", role=Role.TEACHER)
    )

    assert response.status_code == 302
    north.student.refresh_from_db()
    assert (north.student.first_name, north.student.role) == ("Ada", Role.TEACHER)


def test_a_manager_cannot_make_anyone_an_admin(north: Campus) -> None:
    form_page = north.client.get(change_url(north.student)).content.decode()
    assert 'value="admin"' not in form_page

    refused = north.client.post(
        change_url(north.student),
        user_form(north.student, role=Role.ADMIN, is_superuser="on", is_staff="on"),
    )
    superuser = north.client.post(
        change_url(north.student), user_form(north.student, is_superuser="on", is_staff="on")
    )

    assert refused.status_code == 200
    assert "Select a valid choice" in refused.content.decode()
    assert superuser.status_code == 302
    north.student.refresh_from_db()
    assert north.student.role == Role.STUDENT
    assert not north.student.is_superuser
    assert not north.student.is_staff


def test_a_manager_cannot_move_someone_to_another_school(north: Campus, south: Campus) -> None:
    response = north.client.post(
        change_url(north.student), user_form(north.student, school=south.school.pk)
    )

    assert "Select a valid choice" in response.content.decode()
    north.student.refresh_from_db()
    assert north.student.school == north.school


def test_a_manager_does_not_see_or_touch_an_admin_of_their_school(north: Campus) -> None:
    admin = UserFactory.create(username="north-admin", role=Role.ADMIN, school=north.school)

    assert "north-admin" not in changelist(north.client, "accounts/user")
    assert north.client.get(change_url(admin)).status_code == 302


def test_people_a_manager_adds_land_in_their_school(north: Campus) -> None:
    response = north.client.post(
        reverse("admin:accounts_user_add"),
        {
            "username": "newcomer",
            "password1": "a long enough passphrase",
            "password2": "a long enough passphrase",
            "usable_password": "true",
        },
    )

    assert response.status_code == 302
    assert User.objects.get(username="newcomer").school == north.school


def test_hypervisors_are_read_only_for_managers(north: Campus) -> None:
    hypervisor = HypervisorFactory.create(name="host-1")

    page = changelist(north.client, "hypervisors/hypervisor")
    assert "host-1" in page
    assert 'name="action"' not in page  # no drain, enable or rebalance
    assert north.client.get(reverse("admin:hypervisors_hypervisor_add")).status_code == 403
    detail = north.client.get(change_url(hypervisor))
    assert detail.status_code == 200
    assert 'type="submit"' not in detail.content.decode().split('id="content-main"')[1]
    refused = north.client.post(change_url(hypervisor), {"name": "renamed"})
    assert refused.status_code == 403
    hypervisor.refresh_from_db()
    assert hypervisor.name == "host-1"


@pytest.mark.parametrize(
    "model",
    ["accounts/ldapgroupmapping", "accounts/ldapaccount", "accounts/ldapsyncrun"],
)
def test_the_directory_settings_are_for_administrators_only(north: Campus, model: str) -> None:
    assert north.client.get(f"/admin/{model}/").status_code == 403


def test_students_stay_out_of_the_admin_even_with_the_staff_flag(north: Campus) -> None:
    """The role decides (teachers have their own scoped view: test_admin_teachers.py)."""
    north.student.is_staff = True
    north.student.save()
    client = Client()
    client.force_login(north.student)

    assert client.get("/admin/").status_code == 302  # to the admin login
    assert client.get("/admin/accounts/course/").status_code == 302
    refused = Client().post(
        reverse("admin:login"), {"username": "north-student", "password": "password"}
    )
    assert refused.status_code == 200  # the login form again, with its error
    assert "_auth_user_id" not in refused.wsgi_request.session


def test_a_manager_without_staff_flag_signs_in_to_the_admin(north: Campus) -> None:
    client = Client()

    response = client.post(
        reverse("admin:login"), {"username": "north-manager", "password": "password"}
    )

    assert response.status_code == 302
    assert client.get("/admin/accounts/course/").status_code == 200


def test_quotas_a_manager_may_set(north: Campus, south: Campus) -> None:
    add = reverse("admin:accounts_quota_add")
    for scope, allowed in (
        ({"course": north.course.pk}, True),
        ({"user": north.student.pk}, True),
        ({"school": north.school.pk, "role": Role.TEACHER}, True),
        ({"role": Role.STUDENT}, False),  # the default everywhere: administrators only
    ):
        response = north.client.post(add, {**scope, "max_desktops": 3})
        assert (response.status_code == 302) == allowed, (scope, response.status_code)
    refused = north.client.post(add, {"course": south.course.pk, "max_desktops": 3})
    assert "Select a valid choice" in refused.content.decode()
    assert not Quota.objects.filter(course=south.course).exists()


def test_a_manager_regenerates_a_courses_code_with_an_admin_action(
    north: Campus, south: Campus
) -> None:
    response = north.client.post(
        "/admin/accounts/course/",
        {
            "action": "new_student_codes",
            "_selected_action": [north.course.pk, south.course.pk],
        },
        follow=True,
    )

    code = EnrolmentCode.objects.get(course=north.course, role=CourseRole.STUDENT)
    assert f"{code.code[:4]}-{code.code[4:]}" in response.content.decode()
    # The other school's course is not in the manager's queryset: untouched.
    assert not EnrolmentCode.objects.filter(course=south.course).exists()


def test_user_page_shows_usage_against_limits(north: Campus) -> None:
    page = north.client.get(change_url(north.student)).content.decode()

    assert "Running desktops" in page
    assert "school North" in page
    course_page = north.client.get(change_url(north.course)).content.decode()
    assert "north-student" in course_page and "0 / 1" in course_page


# --- password reset ----------------------------------------------------------------------------


def test_a_manager_resets_a_password_and_the_person_must_choose_a_new_one(
    north: Campus,
) -> None:
    response = north.client.post(
        "/admin/accounts/user/",
        {"action": "reset_passwords", "_selected_action": [north.student.pk]},
    )

    assert response.status_code == 200
    page = response.content.decode()
    assert "shown only now" in page
    temporary = page.split("<code>")[1].split("</code>")[0]
    north.student.refresh_from_db()
    assert north.student.must_change_password
    assert north.student.check_password(temporary)
    assert not north.student.check_password("password")

    person = Client()
    signed_in = person.post(
        reverse("accounts:sign-in"), {"username": "north-student", "password": temporary}
    )
    assert signed_in.status_code == 302
    assert person.get(reverse("accounts:home"))["Location"] == reverse("accounts:password")
    assert person.get("/desktops/1/viewer/")["Location"] == reverse("accounts:password")
    chosen = person.post(
        reverse("accounts:password"),
        {"new_password1": "my own new passphrase", "new_password2": "my own new passphrase"},
    )
    assert chosen["Location"] == reverse("accounts:home")
    assert person.get(reverse("accounts:home")).status_code == 200
    north.student.refresh_from_db()
    assert not north.student.must_change_password
    assert north.student.check_password("my own new passphrase")


def test_a_manager_cannot_reset_another_schools_or_an_admins_password(
    north: Campus, south: Campus
) -> None:
    admin = UserFactory.create(role=Role.ADMIN, school=north.school)

    for person in (south.student, admin):
        with pytest.raises(PermissionDeniedError):
            user_password_reset(actor=north.manager, user=person)
    with pytest.raises(PermissionDeniedError):
        user_password_reset(actor=north.student, user=north.student)


def test_a_directory_persons_password_is_reset_in_the_directory(north: Campus) -> None:
    LdapAccount.objects.create(user=north.student, dn="uid=north-student,dc=test")

    with pytest.raises(ConflictError, match="reset the password there"):
        user_password_reset(actor=north.manager, user=north.student)


@pytest.mark.parametrize(
    "model",
    [
        "accounts/quota",
        "accounts/schooldirectory",
        "accounts/ldapgroupmapping",
        "accounts/ldapaccount",
        "accounts/ldapsyncrun",
        "desktops/viewertoken",
        "hypervisors/placementrule",
        "hypervisors/desktopmove",
        "hypervisors/hypervisorevent",
    ],
)
def test_administrators_open_every_page(north: Campus, model: str) -> None:
    admin = UserFactory.create(role=Role.ADMIN, school=None)  # not even is_staff
    client = Client()
    client.force_login(admin)

    assert client.get(f"/admin/{model}/").status_code == 200
    assert client.get(f"/admin/{model}/add/").status_code in (200, 403)
    assert client.get(change_url(north.course)).status_code == 200
    assert client.get(change_url(north.manager)).status_code == 200
