"""Enrolment codes: a course's code per role, the pages to sign up, sign in and join with one."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from accounts.choices import CourseRole, Role
from accounts.models import Course, CourseMembership, EnrolmentCode, School, User
from accounts.services.enrolment import (
    course_join_with_code,
    enrolment_code_disable,
    enrolment_code_regenerate,
    format_code,
    normalize_code,
)
from accounts.tests.factories import CourseFactory, MembershipFactory, SchoolFactory, UserFactory
from isard.core.errors import ConflictError, NotFoundError, PermissionDeniedError

pytestmark = pytest.mark.django_db


@pytest.fixture
def school() -> School:
    return SchoolFactory.create(name="North", slug="north")


@pytest.fixture
def course(school: School) -> Course:
    return CourseFactory.create(school=school, name="Latin 1A")


@pytest.fixture
def teacher(school: School, course: Course) -> User:
    user = UserFactory.create(username="tom", role=Role.TEACHER, school=school)
    MembershipFactory.create(course=course, user=user, role=CourseRole.TEACHER)
    return user


@pytest.fixture
def student_code(teacher: User, course: Course) -> str:
    return enrolment_code_regenerate(actor=teacher, course=course, role=CourseRole.STUDENT).code


def role_in(user: User, course: Course) -> str | None:
    membership = CourseMembership.objects.filter(user=user, course=course).first()
    return membership.role if membership else None


# --- services --------------------------------------------------------------------------------


def test_each_course_has_one_code_per_role_and_regenerating_replaces_it(
    teacher: User, course: Course, student_code: str
) -> None:
    teacher_code = enrolment_code_regenerate(actor=teacher, course=course, role=CourseRole.TEACHER)
    new_student_code = enrolment_code_regenerate(
        actor=teacher, course=course, role=CourseRole.STUDENT
    )

    assert EnrolmentCode.objects.filter(course=course).count() == 2
    assert new_student_code.code != student_code
    assert teacher_code.code not in (student_code, new_student_code.code)
    with pytest.raises(NotFoundError, match="not valid"):
        course_join_with_code(user=UserFactory.create(school=course.school), code=student_code)


def test_only_the_courses_teachers_change_its_codes(
    school: School, course: Course, teacher: User
) -> None:
    other_teacher = UserFactory.create(role=Role.TEACHER, school=school)
    student = UserFactory.create(school=school)
    MembershipFactory.create(course=course, user=student)

    for person in (other_teacher, student):
        with pytest.raises(PermissionDeniedError, match="Only the teachers of “Latin 1A”"):
            enrolment_code_regenerate(actor=person, course=course, role=CourseRole.STUDENT)
        with pytest.raises(PermissionDeniedError):
            enrolment_code_disable(actor=person, course=course, role=CourseRole.STUDENT)


def test_a_disabled_code_is_refused_until_regenerated(
    teacher: User, course: Course, student_code: str
) -> None:
    enrolment_code_disable(actor=teacher, course=course, role=CourseRole.STUDENT)
    person = UserFactory.create(school=course.school)

    with pytest.raises(ConflictError, match="The code for “Latin 1A” has been disabled"):
        course_join_with_code(user=person, code=student_code)

    fresh = enrolment_code_regenerate(actor=teacher, course=course, role=CourseRole.STUDENT)
    assert course_join_with_code(user=person, code=fresh.code).changed
    assert role_in(person, course) == CourseRole.STUDENT


def test_codes_are_typed_loosely_and_shown_in_two_groups() -> None:
    assert normalize_code(" abcd-efgh ") == "ABCDEFGH"
    assert format_code("ABCDEFGH") == "ABCD-EFGH"


def test_a_teacher_code_makes_a_student_a_teacher_and_a_student_code_never_demotes(
    teacher: User, course: Course, student_code: str
) -> None:
    teacher_code = enrolment_code_regenerate(
        actor=teacher, course=course, role=CourseRole.TEACHER
    ).code
    person = UserFactory.create(role=Role.STUDENT, school=course.school)
    course_join_with_code(user=person, code=student_code)

    enrolment = course_join_with_code(user=person, code=format_code(teacher_code).lower())

    assert enrolment.changed and enrolment.role == CourseRole.TEACHER
    person.refresh_from_db()
    assert person.role == Role.TEACHER
    again = course_join_with_code(user=person, code=student_code)
    assert not again.changed and str(again) == "You are already in “Latin 1A” as a teacher."
    assert role_in(person, course) == CourseRole.TEACHER


def test_a_code_does_not_carry_anyone_across_schools(course: Course, student_code: str) -> None:
    stranger = UserFactory.create(school=SchoolFactory.create(name="South", slug="south"))

    with pytest.raises(PermissionDeniedError, match="another school"):
        course_join_with_code(user=stranger, code=student_code)
    assert role_in(stranger, course) is None


# --- pages -----------------------------------------------------------------------------------


def test_sign_up_with_a_student_code_lands_in_the_course(
    client: Client, course: Course, student_code: str
) -> None:
    page = client.get(reverse("accounts:sign-up") + f"?code={student_code}")
    assert page.status_code == 200
    assert f'value="{student_code}"' in page.content.decode()
    assert '<label for="id_username">' in page.content.decode()

    response = client.post(
        reverse("accounts:sign-up"),
        {
            "code": format_code(student_code),
            "username": "newkid",
            "first_name": "New",
            "last_name": "Kid",
            "email": "",
            "password1": "a long enough passphrase",
            "password2": "a long enough passphrase",
        },
        follow=True,
    )

    assert response.redirect_chain[-1][0] == reverse("accounts:home")
    assert "You joined “Latin 1A” as a student." in response.content.decode()
    user = User.objects.get(username="newkid")
    assert (user.role, user.school, role_in(user, course)) == (
        Role.STUDENT,
        course.school,
        CourseRole.STUDENT,
    )
    assert user.check_password("a long enough passphrase")
    assert response.context["user"] == user


def test_sign_up_with_a_teacher_code_makes_a_teacher(
    client: Client, teacher: User, course: Course
) -> None:
    code = enrolment_code_regenerate(actor=teacher, course=course, role=CourseRole.TEACHER).code

    client.post(
        reverse("accounts:sign-up"),
        {
            "code": code,
            "username": "newteacher",
            "password1": "a long enough passphrase",
            "password2": "a long enough passphrase",
        },
    )

    user = User.objects.get(username="newteacher")
    assert (user.role, role_in(user, course)) == (Role.TEACHER, CourseRole.TEACHER)


@pytest.mark.parametrize(
    ("make_code", "error"),
    [
        ("wrong", "is not valid"),
        ("disabled", "has been disabled"),
        ("regenerated", "is not valid"),
    ],
)
def test_sign_up_with_a_bad_code_creates_nobody_and_says_why(
    client: Client, teacher: User, course: Course, student_code: str, make_code: str, error: str
) -> None:
    code = {"wrong": "ZZZZ-ZZZZ"}.get(make_code, student_code)
    if make_code == "disabled":
        enrolment_code_disable(actor=teacher, course=course, role=CourseRole.STUDENT)
    if make_code == "regenerated":
        enrolment_code_regenerate(actor=teacher, course=course, role=CourseRole.STUDENT)

    response = client.post(
        reverse("accounts:sign-up"),
        {
            "code": code,
            "username": "newkid",
            "password1": "a long enough passphrase",
            "password2": "a long enough passphrase",
        },
    )

    assert response.status_code == 200
    assert error in response.content.decode()
    assert 'aria-invalid="true"' in response.content.decode()
    assert not User.objects.filter(username="newkid").exists()


def test_sign_up_refuses_a_taken_username_and_a_weak_password(
    client: Client, course: Course, student_code: str
) -> None:
    UserFactory.create(username="taken", school=course.school)

    taken = client.post(
        reverse("accounts:sign-up"),
        {
            "code": student_code,
            "username": "TAKEN",
            "password1": "a long enough passphrase",
            "password2": "a long enough passphrase",
        },
    )
    weak = client.post(
        reverse("accounts:sign-up"),
        {"code": student_code, "username": "fresh", "password1": "abc", "password2": "abc"},
    )

    assert "The username “TAKEN” is taken" in taken.content.decode()
    assert "too short" in weak.content.decode()
    assert not User.objects.filter(username="fresh").exists()


def test_sign_in_with_a_code_joins_the_course(
    client: Client, course: Course, student_code: str
) -> None:
    person = UserFactory.create(username="kim", school=course.school)

    response = client.post(
        reverse("accounts:sign-in"),
        {"username": "kim", "password": "password", "code": student_code},
        follow=True,
    )

    assert response.redirect_chain[-1][0] == reverse("dashboard")
    assert "You joined “Latin 1A” as a student." in response.content.decode()
    assert role_in(person, course) == CourseRole.STUDENT


def test_sign_in_with_a_wrong_code_does_not_sign_in(client: Client, course: Course) -> None:
    UserFactory.create(username="kim", school=course.school)

    response = client.post(
        reverse("accounts:sign-in"), {"username": "kim", "password": "password", "code": "nope"}
    )

    assert response.status_code == 200
    assert "The code “nope” is not valid" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_sign_in_page_is_not_the_admin_login_and_protects_pages(client: Client) -> None:
    response = client.get(reverse("accounts:join"))

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("accounts:sign-in"))
    page = client.get(response["Location"])
    assert page.status_code == 200
    assert "<h1>Sign in</h1>" in page.content.decode()
    assert '<label for="id_password">' in page.content.decode()


def test_join_page_puts_a_signed_in_person_in_the_course(
    client: Client, course: Course, student_code: str
) -> None:
    person = UserFactory.create(school=course.school)
    client.force_login(person)

    wrong = client.post(reverse("accounts:join"), {"code": "AAAA-AAAA"})
    right = client.post(reverse("accounts:join"), {"code": student_code}, follow=True)

    assert "is not valid" in wrong.content.decode()
    assert "You joined “Latin 1A” as a student." in right.content.decode()
    assert role_in(person, course) == CourseRole.STUDENT


def test_sign_out_is_a_post_and_ends_the_session(client: Client) -> None:
    client.force_login(UserFactory.create())

    response = client.post(reverse("accounts:sign-out"))

    assert response.status_code == 302
    assert response["Location"] == reverse("accounts:sign-in")
    assert "_auth_user_id" not in client.session


def test_a_teacher_regenerates_and_disables_codes_on_the_home_page(
    client: Client, teacher: User, course: Course, student_code: str
) -> None:
    client.force_login(teacher)
    url = reverse("accounts:course-code", args=[course.pk, CourseRole.STUDENT])

    home = client.get(reverse("accounts:home"))
    assert format_code(student_code) in home.content.decode()
    regenerated = client.post(url, {"action": "regenerate"}, follow=True)
    new_code = EnrolmentCode.objects.get(course=course, role=CourseRole.STUDENT).code
    assert new_code != student_code
    assert (
        f"New student code for “Latin 1A”: {format_code(new_code)}." in regenerated.content.decode()
    )
    client.post(url, {"action": "disable"})
    assert not EnrolmentCode.objects.get(course=course, role=CourseRole.STUDENT).enabled


def test_a_student_cannot_change_a_courses_codes_through_the_page(
    client: Client, course: Course, student_code: str
) -> None:
    student = UserFactory.create(school=course.school)
    MembershipFactory.create(course=course, user=student)
    client.force_login(student)

    response = client.post(
        reverse("accounts:course-code", args=[course.pk, CourseRole.STUDENT]),
        {"action": "regenerate"},
        follow=True,
    )

    assert "Only the teachers of “Latin 1A” can change its codes." in response.content.decode()
    assert EnrolmentCode.objects.get(course=course, role=CourseRole.STUDENT).code == student_code


def test_a_teacher_neither_sees_nor_changes_another_teachers_course_codes(
    client: Client, teacher: User, course: Course, student_code: str, school: School
) -> None:
    other_teacher = UserFactory.create(username="olga", role=Role.TEACHER, school=school)
    own_course = CourseFactory.create(school=school, name="2B")
    MembershipFactory.create(course=own_course, user=other_teacher, role=CourseRole.TEACHER)
    client.force_login(other_teacher)

    home = client.get(reverse("accounts:home")).content.decode()
    changed = client.post(
        reverse("accounts:course-code", args=[course.pk, CourseRole.STUDENT]),
        {"action": "disable"},
        follow=True,
    )

    assert "2B" in home
    assert format_code(student_code) not in home and "Latin 1A" not in home
    assert "Only the teachers of “Latin 1A” can change its codes." in changed.content.decode()
    assert EnrolmentCode.objects.get(course=course, role=CourseRole.STUDENT).enabled
