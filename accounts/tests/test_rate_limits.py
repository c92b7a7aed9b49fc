"""Failed sign-ins and wrong course codes on the pages are limited (accounts.rate_limits),
counted in Redis like the API's throttles."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import redis
from django.test import Client
from django.urls import reverse

from accounts.choices import CourseRole, Role
from accounts.models import Course, User
from accounts.services.enrolment import enrolment_code_regenerate
from accounts.tests.factories import CourseFactory, MembershipFactory, SchoolFactory, UserFactory
from isard.core.cache import RedisCache

pytestmark = pytest.mark.django_db

WRONG = "Please enter a correct username and password"
LIMITED = "Too many failed sign-ins in a short time. Wait"
WRONG_CODE = "is not valid"
CODE_LIMITED = "Too many wrong course codes in a short time. Wait"


@pytest.fixture(autouse=True)
def low_rates(settings: Any) -> None:
    settings.ISARD_SIGNIN_RATE = "3/minute"
    settings.ISARD_SIGNIN_ADDRESS_RATE = "5/minute"
    settings.ISARD_ENROLMENT_CODE_RATE = "3/minute"


@pytest.fixture
def password_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The usernames whose password the sign-in form checked."""
    from django.contrib.auth import authenticate

    checked: list[str] = []

    def counting(request: Any = None, **credentials: Any) -> Any:
        checked.append(credentials.get("username", ""))
        return authenticate(request, **credentials)

    monkeypatch.setattr("django.contrib.auth.forms.authenticate", counting)
    return checked


@pytest.fixture
def alice() -> User:
    return UserFactory.create(username="alice")


@pytest.fixture
def course() -> Course:
    school = SchoolFactory.create(name="North", slug="north")
    course = CourseFactory.create(school=school, name="Latin 1A")
    teacher = UserFactory.create(username="tom", role=Role.TEACHER, school=school)
    MembershipFactory.create(course=course, user=teacher, role=CourseRole.TEACHER)
    return course


@pytest.fixture
def student_code(course: Course) -> str:
    teacher = User.objects.get(username="tom")
    return enrolment_code_regenerate(actor=teacher, course=course, role=CourseRole.STUDENT).code


def sign_in(
    client: Client, username: str, password: str, address: str = "10.0.0.1", code: str = ""
) -> Any:
    return client.post(
        reverse("accounts:sign-in"),
        {"username": username, "password": password, "code": code},
        REMOTE_ADDR=address,
    )


def test_wrong_passwords_up_to_the_limit_then_429_and_a_right_one_is_refused_too(
    alice: User, password_checks: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    client = Client()
    for _ in range(3):
        response = sign_in(client, "alice", "guess")
        assert response.status_code == 200
        assert WRONG in response.content.decode()
    assert password_checks == ["alice"] * 3

    with caplog.at_level(logging.WARNING, logger="accounts.rate_limits"):
        response = sign_in(client, "alice", "guess")
    page = response.content.decode()
    assert response.status_code == 429
    assert LIMITED in page and "seconds and try again" in page
    assert WRONG not in page and 'name="username"' in page  # the same page, not validated
    assert 55 <= int(response["Retry-After"]) <= 60
    assert "sign-in refused: too many failures for username 'alice'" in caplog.text

    response = sign_in(client, "alice", "password")
    assert response.status_code == 429 and LIMITED in response.content.decode()
    assert password_checks == ["alice"] * 3  # no password was checked while limited
    assert client.get(reverse("accounts:home")).status_code == 302  # not signed in


def test_the_limit_is_per_username_from_any_address(alice: User) -> None:
    client = Client()
    for address in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        assert sign_in(client, "alice", "guess", address).status_code == 200
    assert sign_in(client, "Alice", "password", "10.0.0.4").status_code == 429
    bob = UserFactory.create(username="bob")
    response = sign_in(client, "bob", "password", "10.0.0.1")  # another person, same address
    assert response.status_code == 302
    assert client.get(reverse("accounts:home")).wsgi_request.user == bob


def test_failures_from_one_address_are_limited_whoever_they_try(alice: User) -> None:
    client = Client()
    for number in range(5):
        assert sign_in(client, f"nobody{number}", "guess").status_code == 200
    assert sign_in(client, "alice", "password").status_code == 429
    assert sign_in(client, "alice", "password", "10.0.0.2").status_code == 302


def test_right_passwords_do_not_count(alice: User) -> None:
    for _ in range(6):  # more than both limits, all from one address
        assert sign_in(Client(), "alice", "password").status_code == 302
    assert sign_in(Client(), "alice", "guess").status_code == 200


def test_with_redis_unreachable_sign_ins_go_through_unlimited(
    alice: User, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def unreachable(self: RedisCache) -> Any:
        raise redis.ConnectionError("refused")

    monkeypatch.setattr(RedisCache, "redis_client", unreachable)
    client = Client()
    with caplog.at_level(logging.WARNING, logger="isard.core.rate_limits"):
        for _ in range(4):
            assert sign_in(client, "alice", "guess").status_code == 200
    assert "rate limits not counted, the cache is unreachable" in caplog.text
    assert sign_in(client, "alice", "password").status_code == 302


def join(client: Client, code: str, address: str = "10.0.0.1") -> Any:
    return client.post(reverse("accounts:join"), {"code": code}, REMOTE_ADDR=address)


def test_guessing_codes_on_the_join_page_is_limited_per_person(
    course: Course, student_code: str
) -> None:
    client = Client()
    client.force_login(UserFactory.create(school=course.school))
    for guess in ("AAAA-AAAA", "BBBB-BBBB", "CCCC-CCCC"):
        response = join(client, guess)
        assert response.status_code == 200 and WRONG_CODE in response.content.decode()
    response = join(client, student_code, "10.0.0.2")  # the right code, from elsewhere
    assert response.status_code == 429 and CODE_LIMITED in response.content.decode()
    assert not course.memberships.filter(role=CourseRole.STUDENT).exists()

    other = Client()
    other.force_login(UserFactory.create(school=course.school))
    assert join(other, student_code).status_code == 302  # another person, same address


def test_guessing_codes_is_limited_per_address_on_every_page(
    course: Course, student_code: str
) -> None:
    client = Client()
    for number in range(2):
        response = client.post(
            reverse("accounts:sign-up"),
            {
                "code": f"ZZZZ-ZZZ{number + 2}",
                "username": f"new{number}",
                "password1": "a long passphrase 42",
                "password2": "a long passphrase 42",
            },
            REMOTE_ADDR="10.0.0.1",
        )
        assert response.status_code == 200 and WRONG_CODE in response.content.decode()
    for guess in ("AAAA-AAAA", "BBBB-BBBB"):  # with no password: the code is checked anyway
        response = sign_in(client, "", "", code=guess)
        assert response.status_code == 200 and WRONG_CODE in response.content.decode()
    person = Client()
    person.force_login(UserFactory.create(school=course.school))
    assert join(person, "CCCC-CCCC").status_code == 200
    response = client.post(
        reverse("accounts:sign-up"),
        {
            "code": student_code,
            "username": "newcomer",
            "password1": "a long passphrase 42",
            "password2": "a long passphrase 42",
        },
        REMOTE_ADDR="10.0.0.1",
    )
    assert response.status_code == 429 and CODE_LIMITED in response.content.decode()
    assert 'value="newcomer"' in response.content.decode()
    assert not User.objects.filter(username="newcomer").exists()
    assert join(person, student_code, "10.0.0.2").status_code == 302  # another address


def test_look_alike_usernames_share_the_window(alice: User) -> None:
    """Django's username field reads "ａｌｉｃｅ" (fullwidth) as alice: so does the limit."""
    client = Client()
    for _ in range(3):
        assert sign_in(client, "alice", "guess").status_code == 200
    for look_alike in ("ａｌｉｃｅ", "ALICE", " alice "):
        assert sign_in(client, look_alike, "password", "10.0.0.9").status_code == 429
    api = client.post(
        "/api/v1/auth/login/",
        {"username": "ａlice", "password": "password"},
        content_type="application/json",
        REMOTE_ADDR="10.0.0.8",
    )
    assert api.status_code == 429
    assert client.get(reverse("accounts:home")).status_code == 302  # not signed in


def admin_sign_in(client: Client, username: str, password: str, address: str = "10.0.0.1") -> Any:
    return client.post(
        reverse("admin:login"),
        {"username": username, "password": password, "next": "/admin/"},
        REMOTE_ADDR=address,
    )


def test_the_admins_login_counts_in_the_same_windows(password_checks: list[str]) -> None:
    UserFactory.create(username="root", role=Role.ADMIN, is_staff=True)
    client = Client()
    for _ in range(2):
        response = admin_sign_in(client, "root", "guess")
        assert response.status_code == 200 and "correct username" in response.content.decode()
    assert sign_in(client, "root", "guess").status_code == 200  # the third, on the page
    response = admin_sign_in(client, "root", "password")
    assert response.status_code == 429
    assert LIMITED in response.content.decode() and int(response["Retry-After"]) > 0
    assert password_checks == ["root"] * 3  # nothing checked while limited
    assert client.get("/admin/").status_code == 302  # not signed in
    # A right password does not count: an admin signing in often is never limited.
    UserFactory.create(username="root2", role=Role.ADMIN, is_staff=True)
    fresh = Client()
    for _ in range(6):
        assert admin_sign_in(fresh, "root2", "password", "10.0.0.7").status_code == 302
        fresh.logout()


def test_sign_ins_failures_and_refusals_are_counted_for_the_metrics(alice: User) -> None:
    from isard.core import metrics

    metrics.reset_all()
    client = Client()
    assert sign_in(client, "alice", "password").status_code == 302
    for _ in range(3):
        assert sign_in(Client(), "alice", "guess").status_code == 200
    assert sign_in(Client(), "alice", "guess").status_code == 429
    counters = metrics.read_counters(metrics.metrics_redis())
    metrics.reset_all()
    assert [s.value for s in counters[metrics.SIGN_INS.name]] == [1]
    assert [s.value for s in counters[metrics.SIGN_IN_ATTEMPTS.name]] == [4]
    refusals = {s.labels: s.value for s in counters[metrics.SIGN_IN_REFUSALS.name]}
    assert refusals == {("sign_in",): 1}
