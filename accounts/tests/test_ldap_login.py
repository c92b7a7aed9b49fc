"""Directory login through django-auth-ldap against a real slapd."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth import authenticate
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from accounts.choices import Role
from accounts.models import LdapAccount, User
from accounts.tests.factories import SchoolFactory, UserFactory
from accounts.tests.slapd import (  # noqa: F401  (fixtures)
    LdapTree,
    SlapdServer,
    directory_fixture,
    free_port,
    slapd_fixture,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("clean_throttles")]

UNREACHABLE = "directory cannot be reached right now"


@pytest.fixture
def role_groups(directory: LdapTree, settings: Any) -> dict[str, str]:
    """Teachers, managers and admins groups (groupOfNames), configured as role groups."""
    for uid in ("alice", "bob", "carol", "dave"):
        directory.add_person(uid, password=f"{uid}-password")
    groups = {
        "teacher": directory.add_group_of_names("teachers", ["alice", "bob"]),
        "manager": directory.add_group_of_names("managers", ["bob"]),
        "admin": directory.add_group_of_names("admins", ["carol"]),
    }
    settings.ISARD_LDAP_ROLE_GROUPS = groups
    return groups


@pytest.fixture
def unreachable_directory(settings: Any) -> str:
    """Directory login configured, with nothing listening where the directory should be."""
    uri = f"ldap://127.0.0.1:{free_port()}"
    settings.ISARD_LDAP_SERVER_URI = uri
    settings.ISARD_LDAP_USER_SEARCH_BASE = "ou=people,dc=school,dc=test"
    settings.ISARD_LDAP_TIMEOUT = 1.0
    return uri


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP port that accepts connections and never answers, like a hung directory."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"ldap://127.0.0.1:{listener.getsockname()[1]}"


def test_directory_login_copies_attributes_and_links_the_entry(
    directory: LdapTree, role_groups: dict[str, str]
) -> None:
    user = authenticate(None, username="alice", password="alice-password")

    assert isinstance(user, User)
    user.refresh_from_db()
    assert (user.username, user.first_name, user.last_name, user.email) == (
        "alice",
        "Alice",
        "Tester",
        "alice@school.test",
    )
    assert not user.has_usable_password()
    assert LdapAccount.objects.get(user=user).dn == directory.people["alice"]


@pytest.mark.parametrize(
    ("username", "role"),
    [("alice", Role.TEACHER), ("bob", Role.MANAGER), ("carol", Role.ADMIN), ("dave", Role.STUDENT)],
)
def test_directory_login_gives_the_highest_role_of_the_role_groups(
    role_groups: dict[str, str], username: str, role: Role
) -> None:
    user = authenticate(None, username=username, password=f"{username}-password")

    assert isinstance(user, User)
    assert User.objects.get(pk=user.pk).role == role


def test_role_follows_the_directory_at_the_next_login(
    directory: LdapTree, role_groups: dict[str, str]
) -> None:
    authenticate(None, username="alice", password="alice-password")
    directory.remove_member(role_groups["teacher"], "alice")

    user = authenticate(None, username="alice", password="alice-password")

    assert isinstance(user, User)
    assert User.objects.get(pk=user.pk).role == Role.STUDENT


def test_posix_role_groups_work_at_login(directory: LdapTree, settings: Any) -> None:
    directory.add_person("erin", password="erin-password")
    directory.add_person("frank", password="frank-password", gid_number=5000)
    teachers = directory.add_posix_group("teachers", ["erin"])
    admins = directory.add_posix_group("admins", [], gid_number=5000)  # frank's primary group
    settings.ISARD_LDAP_GROUP_TYPE = "posixGroup"
    settings.ISARD_LDAP_ROLE_GROUPS = {"teacher": teachers, "admin": admins}

    erin = authenticate(None, username="erin", password="erin-password")
    frank = authenticate(None, username="frank", password="frank-password")

    assert isinstance(erin, User) and isinstance(frank, User)
    assert (erin.role, frank.role) == (Role.TEACHER, Role.ADMIN)


def test_group_of_unique_names_role_groups_work_at_login(
    directory: LdapTree, settings: Any
) -> None:
    for uid in ("gina", "hugo"):
        directory.add_person(uid, password=f"{uid}-password")
    teachers = directory.add_group_of_unique_names("teachers", ["gina"])
    settings.ISARD_LDAP_GROUP_TYPE = "groupOfUniqueNames"
    settings.ISARD_LDAP_ROLE_GROUPS = {"teacher": teachers}

    gina = authenticate(None, username="gina", password="gina-password")
    hugo = authenticate(None, username="hugo", password="hugo-password")

    assert isinstance(gina, User) and isinstance(hugo, User)
    assert (gina.role, hugo.role) == (Role.TEACHER, Role.STUDENT)
    directory.add_member(teachers, "hugo")
    hugo = authenticate(None, username="hugo", password="hugo-password")
    assert isinstance(hugo, User) and hugo.role == Role.TEACHER


@pytest.mark.parametrize("kind", ["groupOfNames", "groupOfUniqueNames"])
def test_a_nested_role_group_gives_the_role_at_login(
    directory: LdapTree, settings: Any, kind: str
) -> None:
    """Teachers lists the science teachers' group, which lists Nina."""
    directory.add_person("nina", password="nina-password")
    add_group = directory.add_group_of_names
    if kind == "groupOfUniqueNames":
        add_group = directory.add_group_of_unique_names
    science = add_group("science-teachers", ["nina"])
    teachers = add_group("teachers", [science])
    settings.ISARD_LDAP_GROUP_TYPE = kind
    settings.ISARD_LDAP_ROLE_GROUPS = {"teacher": teachers}

    user = authenticate(None, username="nina", password="nina-password")

    assert isinstance(user, User)
    assert User.objects.get(pk=user.pk).role == Role.TEACHER


def test_active_directory_role_groups_work_at_login_nested_too(
    directory: LdapTree, settings: Any
) -> None:
    """AD keeps groups as objectClass=group, members in `member`, often nested."""
    directory.add_person("omar", password="omar-password")
    directory.add_person("pia", password="pia-password")
    science = directory.add_active_directory_group("Science Teachers", ["pia"])
    teachers = directory.add_active_directory_group("Teachers", ["omar", science])
    settings.ISARD_LDAP_GROUP_TYPE = "group"
    settings.ISARD_LDAP_ROLE_GROUPS = {"teacher": teachers}

    for username in ("omar", "pia"):
        user = authenticate(None, username=username, password=f"{username}-password")
        assert isinstance(user, User)
        assert User.objects.get(pk=user.pk).role == Role.TEACHER


def test_wrong_password_is_refused_and_creates_nobody(
    directory: LdapTree, role_groups: dict[str, str]
) -> None:
    assert authenticate(None, username="alice", password="not-her-password") is None
    assert authenticate(None, username="nobody", password="whatever") is None
    assert not User.objects.filter(username__in=["alice", "nobody"]).exists()


def test_disabled_account_cannot_log_in_with_the_right_directory_password(
    directory: LdapTree, role_groups: dict[str, str]
) -> None:
    user = authenticate(None, username="alice", password="alice-password")
    assert isinstance(user, User)
    User.objects.filter(pk=user.pk).update(is_active=False)

    assert authenticate(None, username="alice", password="alice-password") is None


def test_first_login_puts_people_in_the_configured_school(
    directory: LdapTree, role_groups: dict[str, str], settings: Any
) -> None:
    school = SchoolFactory.create(slug="north")
    settings.ISARD_LDAP_SCHOOL = "north"

    user = authenticate(None, username="dave", password="dave-password")

    assert isinstance(user, User)
    assert User.objects.get(pk=user.pk).school == school


def test_start_tls_login_checks_the_directory_certificate(
    directory: LdapTree, slapd: SlapdServer, settings: Any
) -> None:
    directory.add_person("grace", password="grace-password")
    settings.ISARD_LDAP_START_TLS = True
    settings.ISARD_LDAP_CA_CERT_FILE = str(slapd.ca_cert_file)

    assert isinstance(authenticate(None, username="grace", password="grace-password"), User)


def test_ldaps_login(directory: LdapTree, slapd: SlapdServer, settings: Any) -> None:
    directory.add_person("heidi", password="heidi-password")
    settings.ISARD_LDAP_SERVER_URI = slapd.ldaps_uri
    settings.ISARD_LDAP_CA_CERT_FILE = str(slapd.ca_cert_file)

    assert isinstance(authenticate(None, username="heidi", password="heidi-password"), User)


def test_untrusted_certificate_refuses_login_with_a_logged_error(
    directory: LdapTree, slapd: SlapdServer, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    directory.add_person("ivan", password="ivan-password")
    settings.ISARD_LDAP_SERVER_URI = slapd.ldaps_uri  # self-signed, and no CA configured

    with caplog.at_level(logging.ERROR, logger="accounts.ldap.backend"):
        assert authenticate(None, username="ivan", password="ivan-password") is None

    assert slapd.ldaps_uri in caplog.text


def test_unreachable_directory_is_logged_and_local_accounts_still_log_in(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    uri = f"ldap://127.0.0.1:{free_port()}"  # nothing listens there
    settings.ISARD_LDAP_SERVER_URI = uri
    settings.ISARD_LDAP_USER_SEARCH_BASE = "ou=people,dc=school,dc=test"
    settings.ISARD_LDAP_TIMEOUT = 1.0
    settings.AUTHENTICATION_BACKENDS = [
        "accounts.ldap.backend.IsardLDAPBackend",
        "django.contrib.auth.backends.ModelBackend",
    ]
    local = UserFactory.create(username="localteacher", role=Role.TEACHER)

    with caplog.at_level(logging.ERROR, logger="accounts.ldap.backend"):
        assert authenticate(None, username="localteacher", password="password") == local
        assert authenticate(None, username="alice", password="alice-password") is None

    errors = [record for record in caplog.records if record.name == "accounts.ldap.backend"]
    assert errors and all(uri in record.getMessage() for record in errors)
    assert "unreachable" in errors[0].getMessage()


def test_hung_directory_falls_back_to_local_accounts_with_a_clear_error(
    settings: Any, silent_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A directory that accepts connections and never answers must not lock people out.

    What matters is the fallback, not how many seconds it took (that depends on the
    machine's load): the local account logs in, the directory person is refused rather
    than left waiting, and the log names the server and says it is unreachable.
    """
    settings.ISARD_LDAP_SERVER_URI = silent_server
    settings.ISARD_LDAP_USER_SEARCH_BASE = "ou=people,dc=school,dc=test"
    settings.ISARD_LDAP_TIMEOUT = 1.0
    settings.AUTHENTICATION_BACKENDS = [
        "accounts.ldap.backend.IsardLDAPBackend",
        "django.contrib.auth.backends.ModelBackend",
    ]
    local = UserFactory.create(username="localstudent")

    with caplog.at_level(logging.ERROR, logger="accounts.ldap.backend"):
        assert authenticate(None, username="localstudent", password="password") == local
        assert authenticate(None, username="alice", password="alice-password") is None

    errors = [record for record in caplog.records if record.name == "accounts.ldap.backend"]
    assert len(errors) == 2  # one per login attempt, each naming the hung server
    assert all(silent_server in record.getMessage() for record in errors)
    assert all("unreachable" in record.getMessage() for record in errors)
    assert not User.objects.filter(username="alice").exists()


def test_backend_does_nothing_when_ldap_is_not_configured(
    directory: LdapTree, role_groups: dict[str, str], settings: Any
) -> None:
    settings.ISARD_LDAP_SERVER_URI = ""

    assert authenticate(None, username="alice", password="alice-password") is None


def sign_in_page(username: str, password: str) -> Any:
    return Client().post(reverse("accounts:sign-in"), {"username": username, "password": password})


def test_sign_in_page_says_the_directory_cannot_be_reached_and_logs_it(
    unreachable_directory: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="accounts.ldap.backend"):
        response = sign_in_page("alice", "alice-password")

    page = response.content.decode()
    assert response.status_code == 200
    assert UNREACHABLE in page
    assert "correct username" not in page
    assert unreachable_directory in caplog.text


def test_an_unreachable_directory_does_not_tell_which_usernames_exist(
    unreachable_directory: str,
) -> None:
    """A known local name with a wrong password and an unknown name get the same page."""
    UserFactory.create(username="localteacher", role=Role.TEACHER)

    known = sign_in_page("localteacher", "wrong")
    unknown = sign_in_page("nobody", "wrong")

    assert (known.status_code, unknown.status_code) == (200, 200)
    assert known.context["form"].errors == unknown.context["form"].errors
    assert UNREACHABLE in str(known.context["form"].errors)


def test_local_accounts_sign_in_on_the_page_while_the_directory_is_down(
    unreachable_directory: str,
) -> None:
    UserFactory.create(username="localteacher", role=Role.TEACHER)

    response = sign_in_page("localteacher", "password")

    assert response.status_code == 302


def test_api_login_answers_503_when_the_directory_cannot_be_reached(
    unreachable_directory: str, caplog: pytest.LogCaptureFixture
) -> None:
    UserFactory.create(username="localteacher", role=Role.TEACHER)

    with caplog.at_level(logging.ERROR, logger="accounts.ldap.backend"):
        response = APIClient().post(
            "/api/v1/auth/login/", {"username": "alice", "password": "alice-password"}
        )
        local = APIClient().post(
            "/api/v1/auth/login/", {"username": "localteacher", "password": "password"}
        )

    assert response.status_code == 503, response.content
    assert UNREACHABLE in response.json()["message"]
    assert unreachable_directory in caplog.text
    assert local.status_code == 201, local.content


def test_a_wrong_password_with_the_directory_up_is_still_a_wrong_password(
    directory: LdapTree,
) -> None:
    directory.add_person("judy", password="judy-password")

    page = sign_in_page("judy", "wrong").content.decode()
    api = APIClient().post("/api/v1/auth/login/", {"username": "judy", "password": "wrong"})

    assert "correct username" in page and UNREACHABLE not in page
    assert api.status_code == 401


def test_admin_login_says_the_directory_cannot_be_reached(unreachable_directory: str) -> None:
    response = Client().post(
        reverse("admin:login"), {"username": "carol", "password": "carol-password"}
    )

    assert response.status_code == 200
    assert UNREACHABLE in response.content.decode()
