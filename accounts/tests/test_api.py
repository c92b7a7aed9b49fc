"""API: signing in for a token, one's own tokens, who one is, courses and their members."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.staticfiles import finders
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import ApiToken
from accounts.tests.factories import UserFactory
from accounts.tokens import api_token_create, hash_key
from isard.core.rate_limits import parse_rate
from tests.campus import Campus, assert_error, client_for, ids

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("clean_throttles")]


def login(client: APIClient, username: str, password: str = "password", **extra: Any) -> Any:
    return client.post("/api/v1/auth/login/", {"username": username, "password": password, **extra})


def test_login_returns_a_token_that_signs_in_and_is_stored_only_as_a_hash(north: Campus) -> None:
    response = login(APIClient(), north.student.username, token_name="my phone")
    assert response.status_code == 201, response.content
    body = response.json()
    key = body["token"]
    assert body["user"]["username"] == north.student.username
    assert body["token_info"]["name"] == "my phone"
    token = ApiToken.objects.get(pk=body["token_info"]["id"])
    assert token.key_hash == hash_key(key) and key not in token.key_hash
    assert token.expires_at is not None and token.expires_at > timezone.now()

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    me = client.get("/api/v1/me/")
    assert me.status_code == 200
    assert me.json()["username"] == north.student.username
    token.refresh_from_db()
    assert token.last_used_at is not None


def test_wrong_password_is_401_in_the_error_shape(north: Campus) -> None:
    response = login(APIClient(), north.student.username, password="wrong")
    body = assert_error(response, 401)
    assert "Wrong username or password" in body["message"]
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_a_disabled_person_cannot_sign_in_and_their_tokens_stop_working(north: Campus) -> None:
    client = client_for(north.student)
    north.student.is_active = False
    north.student.save()
    assert_error(login(APIClient(), north.student.username), 401)
    assert_error(client.get("/api/v1/me/"), 401)


def test_an_expired_or_unknown_token_is_401(north: Campus) -> None:
    token, key = api_token_create(user=north.student)
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert_error(client.get("/api/v1/me/"), 401)
    client.credentials(HTTP_AUTHORIZATION="Bearer isard_not-a-token")
    assert_error(client.get("/api/v1/me/"), 401)


def test_no_credentials_is_401_and_bad_input_is_400_in_the_error_shape(north: Campus) -> None:
    assert_error(APIClient().get("/api/v1/desktops/"), 401)
    body = assert_error(APIClient().post("/api/v1/auth/login/", {"username": "x"}), 400)
    assert "password" in body["extra"]["fields"]


def test_a_person_lists_and_revokes_only_their_own_tokens(north: Campus) -> None:
    mine, _ = api_token_create(user=north.student, name="laptop")
    theirs, _ = api_token_create(user=north.other_student, name="theirs")
    client = client_for(north.student)  # makes a second token of the student's
    listed = ids(client.get("/api/v1/auth/tokens/"))
    assert mine.pk in listed and theirs.pk not in listed and len(listed) == 2

    assert_error(client.delete(f"/api/v1/auth/tokens/{theirs.pk}/"), 404)
    assert ApiToken.objects.filter(pk=theirs.pk).exists()
    assert client.delete(f"/api/v1/auth/tokens/{mine.pk}/").status_code == 204
    assert not ApiToken.objects.filter(pk=mine.pk).exists()


def test_revoking_the_token_in_use_signs_the_client_out(north: Campus) -> None:
    client = client_for(north.student)
    (token,) = ApiToken.objects.filter(user=north.student)
    assert client.delete(f"/api/v1/auth/tokens/{token.pk}/").status_code == 204
    assert_error(client.get("/api/v1/me/"), 401)


def test_logout_revokes_the_token_it_came_with_only(north: Campus) -> None:
    other, _ = api_token_create(user=north.student, name="laptop")
    client = client_for(north.student)
    assert client.post("/api/v1/auth/logout/").status_code == 204
    assert_error(client.get("/api/v1/me/"), 401)
    assert list(ApiToken.objects.filter(user=north.student)) == [other]


def test_the_browser_session_works_too(north: Campus) -> None:
    client = client_for(north.teacher, token=False)
    assert client.get("/api/v1/me/").json()["is_teacher"] is True
    assert client.post("/api/v1/auth/logout/").status_code == 204
    assert_error(client.get("/api/v1/me/"), 401)


def test_login_is_rate_limited_per_address(north: Campus, settings: Any) -> None:
    settings.ISARD_API_THROTTLE_RATES = {**settings.ISARD_API_THROTTLE_RATES, "login": "3/minute"}
    client = APIClient()
    for _ in range(3):
        assert login(client, north.student.username, password="wrong").status_code == 401
    # Even the right password is refused now: the limit counts attempts, not failures.
    response = login(client, north.student.username)
    body = assert_error(response, 429)
    assert body["extra"]["retry_after"] > 0
    assert int(response["Retry-After"]) > 0


@pytest.mark.usefixtures("fast_passwords")
def test_a_whole_class_behind_one_address_signs_in_with_the_default_limits(
    north: Campus, settings: Any
) -> None:
    """A school is one address: only failures are limited low; successes have a ceiling
    sized for a school's morning (ISARD_API_LOGIN_RATE)."""
    students = [
        UserFactory.create(username=f"class-{number:02}", school=north.school)
        for number in range(40)
    ]
    client = APIClient()
    for student in students:
        response = login(client, student.username)
        assert response.status_code == 201, (student.username, response.content)
    limit, period = parse_rate(settings.ISARD_API_THROTTLE_RATES["login"])
    assert limit * 300 // period >= 480


def test_failed_logins_for_one_person_are_limited_from_any_address_with_the_pages(
    north: Campus, settings: Any
) -> None:
    """A guesser who changes address is still held by the per-username window, which the
    sign-in page shares: failures through either count together."""
    settings.ISARD_SIGNIN_RATE = "3/minute"
    username = north.student.username
    client = APIClient()
    for attempt in range(2):
        wrong = client.post(
            "/api/v1/auth/login/",
            {"username": username, "password": "wrong"},
            REMOTE_ADDR=f"10.0.0.{attempt + 1}",
        )
        assert wrong.status_code == 401
    page = Client().post(
        reverse("accounts:sign-in"),
        {"username": username, "password": "wrong"},
        REMOTE_ADDR="10.0.0.9",
    )
    assert page.status_code == 200  # the third failure, on the page
    response = client.post(
        "/api/v1/auth/login/",
        {"username": username, "password": "password"},  # the right one
        REMOTE_ADDR="10.0.0.20",
    )
    body = assert_error(response, 429)
    assert body["message"].startswith("Too many failed sign-ins in a short time. Wait")
    assert body["extra"]["retry_after"] > 0
    assert int(response["Retry-After"]) == body["extra"]["retry_after"]
    # Someone else signs in as usual.
    assert login(APIClient(), north.teacher.username).status_code == 201


def test_a_successful_login_does_not_count_against_the_person(north: Campus, settings: Any) -> None:
    settings.ISARD_SIGNIN_RATE = "2/minute"
    for _ in range(4):
        assert login(APIClient(), north.student.username).status_code == 201


def test_students_see_their_courses_and_not_the_members(north: Campus, south: Campus) -> None:
    client = client_for(north.student)
    assert ids(client.get("/api/v1/courses/")) == {north.course.pk}
    assert_error(client.get(f"/api/v1/courses/{north.other_course.pk}/"), 404)
    assert_error(client.get(f"/api/v1/courses/{south.course.pk}/"), 404)
    assert_error(client.get(f"/api/v1/courses/{north.course.pk}/members/"), 403)


def test_a_teacher_sees_the_members_of_their_course_not_another_teachers(north: Campus) -> None:
    client = client_for(north.teacher)
    course = client.get(f"/api/v1/courses/{north.course.pk}/").json()
    assert course["can_manage"] is True and course["my_role"] == "teacher"
    members = client.get(f"/api/v1/courses/{north.course.pk}/members/").json()["results"]
    assert {m["username"] for m in members} == {north.teacher.username, north.student.username}
    assert {m["source"] for m in members} == {"manual"}  # given by hand, not by the directory
    assert_error(client.get(f"/api/v1/courses/{north.other_course.pk}/members/"), 404)


def test_a_manager_sees_the_courses_of_their_school_only(north: Campus, south: Campus) -> None:
    client = client_for(north.manager)
    assert ids(client.get("/api/v1/courses/")) == {north.course.pk, north.other_course.pk}
    members = client.get(f"/api/v1/courses/{north.other_course.pk}/members/")
    assert members.status_code == 200
    assert_error(client.get(f"/api/v1/courses/{south.course.pk}/members/"), 404)


def test_unknown_paths_wrong_methods_and_malformed_bodies_have_the_error_shape(
    north: Campus,
) -> None:
    assert_error(client_for(north.student).get("/api/v1/no-such-thing/"), 404)
    assert_error(client_for(north.student).get("/api/v1/desktops/abc/"), 404)
    assert_error(client_for(north.student).put("/api/v1/me/", {}), 405)
    malformed = client_for(north.student).post(
        "/api/v1/desktops/", "{not json", content_type="application/json"
    )
    assert_error(malformed, 400)


def test_schema_and_documentation_are_served_by_the_platform_itself(client: Any) -> None:
    schema = client.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    assert schema.json()["openapi"].startswith("3.")
    for page in ("/api/v1/docs/", "/api/v1/redoc/"):
        html = client.get(page).content.decode()
        assert "/static/drf_spectacular_sidecar/" in html, page
        assert re.findall(r"https?://", html) == [], page  # no CDN, no web fonts
        # Every script and style the page loads is one of the platform's static files.
        for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
            assert finders.find(asset.removeprefix("/static/")), asset


def test_my_usage_against_limits_names_the_quota_that_sets_each(north: Campus) -> None:
    from accounts.models import Quota

    Quota.objects.create(course=north.course, role="student", max_running=2, max_desktops=3)
    body = client_for(north.student).get("/api/v1/me/usage/", {"course": north.course.pk})
    assert body.status_code == 200, body.content
    lines = {line["kind"]: line for line in body.json()}
    assert lines["desktops"]["in_use"] == 1 and lines["desktops"]["allowed"] == 3
    assert lines["running"]["allowed"] == 2
    assert north.course.name in lines["running"]["set_by"]
    assert lines["vcpus"]["allowed"] is None and lines["vcpus"]["allowed_text"] == "unlimited"


def test_usage_of_others_is_for_their_teacher_and_manager_only(
    north: Campus, south: Campus
) -> None:
    url = f"/api/v1/users/{north.student.pk}/usage/"
    assert client_for(north.teacher).get(url).status_code == 200
    assert client_for(north.manager).get(url).status_code == 200
    assert_error(client_for(north.other_student).get(url), 404)
    assert_error(client_for(north.other_teacher).get(url), 404)
    assert_error(client_for(south.manager).get(url), 404)
    assert_error(client_for(north.student).get("/api/v1/me/usage/", {"course": "x"}), 400)
    assert_error(
        client_for(north.student).get("/api/v1/me/usage/", {"course": south.course.pk}), 404
    )


def test_quotas_are_listed_to_those_who_set_them(north: Campus, south: Campus) -> None:
    from accounts.models import Quota

    mine = Quota.objects.create(school=north.school, max_desktops=5)
    Quota.objects.create(school=south.school, max_desktops=9)
    assert ids(client_for(north.manager).get("/api/v1/quotas/")) == {mine.pk}
    assert ids(client_for(north.student).get("/api/v1/quotas/")) == set()
