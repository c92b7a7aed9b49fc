"""Per-school authentication: a school's own directory (a real slapd) and local accounts off."""

from __future__ import annotations

import html
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth import authenticate
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse

from accounts.choices import CourseRole, Role
from accounts.ldap.config import LdapConfig
from accounts.ldap.sync import ldap_sync
from accounts.models import (
    CourseMembership,
    LdapAccount,
    LdapGroupMapping,
    School,
    SchoolDirectory,
    User,
)
from accounts.services.enrolment import enrolment_code_regenerate
from accounts.services.passwords import user_password_reset
from accounts.tests.factories import CourseFactory, MembershipFactory, SchoolFactory, UserFactory
from accounts.tests.slapd import (  # noqa: F401  (fixtures)
    SERVICE_DN,
    SERVICE_PASSWORD,
    LdapTree,
    SlapdServer,
    directory_fixture,
    free_port,
    slapd_fixture,
)
from isard.core.errors import ConflictError, PermissionDeniedError

pytestmark = pytest.mark.django_db

BACKENDS = ["accounts.ldap.backend.IsardLDAPBackend", "accounts.backends.LocalAccountBackend"]


@pytest.fixture(autouse=True)
def no_platform_directory(settings: Any) -> None:
    """Only the schools' own directories: the platform's `ISARD_LDAP_*` is off."""
    settings.ISARD_LDAP_SERVER_URI = ""
    settings.AUTHENTICATION_BACKENDS = BACKENDS


def tree_for(slapd: SlapdServer) -> Iterator[LdapTree]:
    tree = LdapTree.create(slapd)
    yield tree
    tree.close()


@pytest.fixture
def north_tree(slapd: SlapdServer) -> Iterator[LdapTree]:
    yield from tree_for(slapd)


@pytest.fixture
def south_tree(slapd: SlapdServer) -> Iterator[LdapTree]:
    yield from tree_for(slapd)


def school_with_directory(slug: str, tree: LdapTree, **fields: Any) -> School:
    school = SchoolFactory.create(name=slug.capitalize(), slug=slug)
    SchoolDirectory.objects.create(
        school=school,
        server_uri=tree.server.uri,
        bind_dn=SERVICE_DN,
        bind_password=SERVICE_PASSWORD,
        user_search_base=tree.people_dn,
        group_search_base=tree.groups_dn,
        timeout_seconds=2.0,
        **fields,
    )
    return school


@pytest.fixture
def north(north_tree: LdapTree) -> School:
    north_tree.add_person("nina", password="nina-password")
    north_tree.add_person("sam", password="north-sam-password")
    teachers = north_tree.add_group_of_names("teachers", ["nina"])
    return school_with_directory("north", north_tree, role_groups={"teacher": teachers})


@pytest.fixture
def south(south_tree: LdapTree) -> School:
    south_tree.add_person("sam", password="south-sam-password")
    return school_with_directory("south", south_tree)


def test_a_schools_directory_signs_its_people_in_to_that_school(north: School) -> None:
    user = authenticate(None, username="nina", password="nina-password")

    assert isinstance(user, User)
    user.refresh_from_db()
    assert (user.school, user.role, user.first_name) == (north, Role.TEACHER, "Nina")
    account = LdapAccount.objects.get(user=user)
    assert account.directory == north.directory
    assert authenticate(None, username="nina", password="wrong") is None


def test_a_name_in_two_schools_directories_reaches_only_the_first_person(
    north: School, south: School
) -> None:
    north_sam = authenticate(None, username="sam", password="north-sam-password")
    assert isinstance(north_sam, User) and north_sam.school == north

    # South's sam has the same name: they are refused, never merged into north's person.
    assert authenticate(None, username="sam", password="south-sam-password") is None
    assert User.objects.filter(username__iexact="sam").count() == 1
    assert LdapAccount.objects.get(user=north_sam).directory == north.directory


def test_a_disabled_school_directory_signs_nobody_in(north: School) -> None:
    SchoolDirectory.objects.filter(school=north).update(enabled=False)

    assert authenticate(None, username="nina", password="nina-password") is None


def test_a_schools_directory_cannot_make_administrators(north_tree: LdapTree) -> None:
    north_tree.add_person("eve", password="eve-password")
    admins = north_tree.add_group_of_names("admins", ["eve"])
    school = school_with_directory("east", north_tree, role_groups={"admin": admins})

    with pytest.raises(ValidationError, match="role_groups"):
        school.directory.clean()
    assert LdapConfig.from_directory(school.directory).role_groups == {}
    eve = authenticate(None, username="eve", password="eve-password")
    assert isinstance(eve, User) and eve.role == Role.STUDENT and not eve.is_admin


def test_an_unreachable_school_directory_is_logged_and_local_accounts_work(
    north: School, caplog: pytest.LogCaptureFixture
) -> None:
    uri = f"ldap://127.0.0.1:{free_port()}"
    SchoolDirectory.objects.filter(school=north).update(server_uri=uri)
    local = UserFactory.create(username="localnorth", school=SchoolFactory.create())

    with caplog.at_level(logging.ERROR, logger="accounts.ldap.backend"):
        assert authenticate(None, username="nina", password="nina-password") is None
        assert authenticate(None, username="localnorth", password="password") == local

    errors = [r.getMessage() for r in caplog.records if r.name == "accounts.ldap.backend"]
    assert errors and all(uri in message and "unreachable" in message for message in errors)


# --- a school without local accounts -----------------------------------------------------------


@pytest.fixture
def directory_only(north: School) -> School:
    north.local_accounts = False
    north.save()
    return north


def test_local_passwords_do_not_sign_in_where_the_school_turned_them_off(
    directory_only: School,
) -> None:
    local = UserFactory.create(username="oldlocal", school=directory_only)
    admin = UserFactory.create(username="root", role=Role.ADMIN, school=directory_only)
    other_school = UserFactory.create(username="elsewhere")

    assert authenticate(None, username="oldlocal", password="password") is None
    assert authenticate(None, username="root", password="password") == admin
    assert authenticate(None, username="elsewhere", password="password") == other_school
    assert isinstance(authenticate(None, username="nina", password="nina-password"), User)
    assert local.check_password("password")  # the password is kept, just not accepted


def test_an_open_local_session_ends_when_the_school_turns_local_accounts_off(
    north: School,
) -> None:
    local = UserFactory.create(username="oldlocal", school=north)
    client = Client()
    assert (
        client.post(
            reverse("accounts:sign-in"), {"username": "oldlocal", "password": "password"}
        ).status_code
        == 302
    )
    assert client.get(reverse("accounts:home")).status_code == 200

    north.local_accounts = False
    north.save()

    response = client.get(reverse("accounts:home"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("accounts:sign-in"))
    assert local.pk


def test_no_local_sign_up_or_password_reset_in_a_directory_only_school(
    directory_only: School, client: Client
) -> None:
    course = CourseFactory.create(school=directory_only, name="1A")
    teacher = UserFactory.create(role=Role.TEACHER, school=directory_only)
    MembershipFactory.create(course=course, user=teacher, role=CourseRole.TEACHER)
    code = enrolment_code_regenerate(actor=teacher, course=course, role=CourseRole.STUDENT).code

    response = client.post(
        reverse("accounts:sign-up"),
        {
            "code": code,
            "username": "newkid",
            "password1": "a long enough passphrase",
            "password2": "a long enough passphrase",
        },
    )

    assert "“North” signs its people in with its directory" in response.content.decode()
    assert not User.objects.filter(username="newkid").exists()
    admin = UserFactory.create(role=Role.ADMIN)
    with pytest.raises(ConflictError, match="has no local accounts"):
        user_password_reset(actor=admin, user=teacher)
    with pytest.raises(PermissionDeniedError):
        user_password_reset(actor=teacher, user=teacher)


# --- the group sync, directory by directory ----------------------------------------------------


def map_group(school: School, group_dn: str, course: str, role: str = CourseRole.STUDENT) -> None:
    LdapGroupMapping.objects.create(group_dn=group_dn, school=school, course_name=course, role=role)


def members(school: School, course: str) -> set[str]:
    return set(
        CourseMembership.objects.filter(course__school=school, course__name=course).values_list(
            "user__username", flat=True
        )
    )


@pytest.fixture
def synced(
    north: School, south: School, north_tree: LdapTree, south_tree: LdapTree, directory: LdapTree
) -> dict[str, Any]:
    """North and south read their own directories; west, the platform's (`ISARD_LDAP_*`)."""
    north_tree.add_person("nora")
    south_tree.add_person("sol")
    directory.add_person("wes")
    west = SchoolFactory.create(name="West", slug="west")
    groups = {
        "north": north_tree.add_group_of_names("1a", ["nina", "nora", "sam"]),
        "south": south_tree.add_group_of_names("1b", ["sol", "sam"]),
        "west": directory.add_group_of_names("1c", ["wes"]),
    }
    map_group(north, groups["north"], "North 1A")
    map_group(south, groups["south"], "South 1B")
    map_group(west, groups["west"], "West 1C")
    return {"west": west, "groups": groups, "report": ldap_sync()}


def test_each_school_directory_feeds_its_own_schools_courses(
    synced: dict[str, Any], north: School, south: School
) -> None:
    report = synced["report"]

    assert members(north, "North 1A") == {"nina", "nora", "sam"}
    assert members(south, "South 1B") == {"sol"}
    assert members(synced["west"], "West 1C") == {"wes"}
    assert User.objects.get(username="nora").school == north
    assert User.objects.get(username="sol").school == south
    assert LdapAccount.objects.get(user__username="sol").directory == south.directory
    assert LdapAccount.objects.get(user__username="wes").directory is None
    # South's sam has the name north's sam took first: skipped and reported, not merged.
    assert any(
        "“sam” belongs to a person of another directory" in str(entry) for entry in report.skipped
    )
    assert User.objects.get(username="sam").school == north


def test_a_second_sync_of_several_directories_changes_nothing(synced: dict[str, Any]) -> None:
    again = ldap_sync()

    assert not again.has_changes, str(again)
    assert not again.disabled_users


def test_leaving_a_school_directorys_groups_disables_only_that_person(
    synced: dict[str, Any], north_tree: LdapTree
) -> None:
    north_tree.remove_member(synced["groups"]["north"], "nora")

    report = ldap_sync()

    assert report.disabled_users == ["nora"]
    assert set(User.objects.filter(is_active=False).values_list("username", flat=True)) == {"nora"}


def test_an_unreachable_school_directory_is_reported_and_the_others_synced(
    north: School, south: School, north_tree: LdapTree, south_tree: LdapTree
) -> None:
    map_group(north, north_tree.add_group_of_names("1a", ["nina"]), "North 1A")
    map_group(south, south_tree.add_group_of_names("1b", ["sam"]), "South 1B")
    uri = f"ldap://127.0.0.1:{free_port()}"
    SchoolDirectory.objects.filter(school=north).update(server_uri=uri)

    report = ldap_sync()

    assert members(south, "South 1B") == {"sam"}
    assert not members(north, "North 1A")
    assert any(uri in warning and "does not answer" in warning for warning in report.warnings)


def directory_form(directory: SchoolDirectory, **changes: str) -> dict[str, Any]:
    """The school directory's admin form as a browser posts it, with `changes`."""
    values: dict[str, Any] = {
        "school": directory.school_id,
        "enabled": "on",
        "server_uri": directory.server_uri,
        "bind_dn": directory.bind_dn,
        "bind_password": "",
        "user_search_base": directory.user_search_base,
        "user_filter": directory.user_filter,
        "username_attribute": directory.username_attribute,
        "first_name_attribute": directory.first_name_attribute,
        "last_name_attribute": directory.last_name_attribute,
        "email_attribute": directory.email_attribute,
        "group_search_base": directory.group_search_base,
        "group_type": "groupOfNames",
        "ca_cert_file": "",
        "role_groups": "",
        "timeout_seconds": "3",
    }
    return values | changes


@pytest.fixture
def admin_client(north: School) -> Client:
    client = Client()
    client.force_login(UserFactory.create(role=Role.ADMIN, is_staff=True, is_superuser=True))
    return client


def directory_url(directory: SchoolDirectory) -> str:
    return reverse("admin:accounts_schooldirectory_change", args=[directory.pk])


def test_school_directories_are_set_by_administrators_and_keep_their_password(
    north: School, admin_client: Client
) -> None:
    manager = UserFactory.create(role=Role.MANAGER, school=north)
    directory = north.directory
    url = directory_url(directory)
    client = Client()
    client.force_login(manager)
    assert client.get(url).status_code == 403

    page = admin_client.get(url).content.decode()
    assert SERVICE_PASSWORD not in page
    response = admin_client.post(url, directory_form(directory, role_groups="admin=cn=admins,dc=x"))
    assert response.status_code == 200  # refused: a school directory makes no admins
    assert html.escape("admin: not a role a school's directory may give") in (
        response.content.decode()
    )

    response = admin_client.post(url, directory_form(directory))
    assert response.status_code == 302
    directory.refresh_from_db()
    assert directory.bind_password == SERVICE_PASSWORD
    assert directory.timeout_seconds == 3.0
    assert directory.role_groups == {}
    assert authenticate(None, username="nina", password="nina-password") is not None


def test_role_groups_are_written_in_the_settings_format_and_shown_in_it(
    north: School, admin_client: Client, north_tree: LdapTree
) -> None:
    """One format, `ISARD_LDAP_ROLE_GROUPS`'s, in the school directory's form too."""
    directory = north.directory
    url = directory_url(directory)
    teachers = directory.role_groups["teacher"]
    managers = north_tree.add_group_of_names("managers", ["sam"])

    assert f"teacher={teachers}" in admin_client.get(url).content.decode()
    response = admin_client.post(
        url, directory_form(directory, role_groups=f"Teacher = {teachers}\nmanager={managers}")
    )

    assert response.status_code == 302
    directory.refresh_from_db()
    assert directory.role_groups == {"teacher": teachers, "manager": managers}
    sam = authenticate(None, username="sam", password="north-sam-password")
    assert isinstance(sam, User) and sam.role == Role.MANAGER


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ('{"teacher": "cn=teachers,dc=x"}', "(not JSON)"),
        ("teacher", "“teacher” is not role=group DN"),
        ("teacher=teachers", "the group of “teacher”, “teachers”, is not a DN"),
        ("teacher=cn=a,dc=x;teacher=cn=b,dc=x", "“teacher” is given twice"),
    ],
)
def test_role_groups_in_another_format_are_refused_with_the_format_to_use(
    north: School, admin_client: Client, written: str, message: str
) -> None:
    directory = north.directory
    before = dict(directory.role_groups)

    response = admin_client.post(
        directory_url(directory), directory_form(directory, role_groups=written)
    )

    assert response.status_code == 200
    page = response.content.decode()
    assert html.escape(message) in page
    assert "one per line or separated by" in page
    directory.refresh_from_db()
    assert directory.role_groups == before


def test_a_school_directory_names_its_own_name_and_mail_attributes(
    north: School, north_tree: LdapTree, admin_client: Client
) -> None:
    """A directory that keeps one display name (cn) and its mail elsewhere: the sync and
    the first sign-in copy what the school's directory says."""
    north_tree.add_person("olga", password="olga-password", given_name="Olga", surname="Ivanova")
    north_tree.modify(north_tree.people["olga"], "description", ["olga.ivanova@north.test"])
    north_tree.add_person("pia", password="pia-password", given_name="Pia", surname="Berg")
    north_tree.modify(north_tree.people["pia"], "description", ["pia@north.test"])
    directory = north.directory
    response = admin_client.post(
        directory_url(directory),
        directory_form(
            directory,
            first_name_attribute="cn",
            last_name_attribute="",
            email_attribute="description",
            role_groups=f"teacher={directory.role_groups['teacher']}",
        ),
    )
    assert response.status_code == 302
    map_group(north, north_tree.add_group_of_names("1a", ["olga"]), "North 1A")

    ldap_sync()
    pia = authenticate(None, username="pia", password="pia-password")

    olga = User.objects.get(username="olga")
    assert (olga.first_name, olga.last_name, olga.email) == (
        "Olga Ivanova",
        "",
        "olga.ivanova@north.test",
    )
    assert isinstance(pia, User)
    pia.refresh_from_db()
    assert (pia.first_name, pia.last_name, pia.email) == ("Pia Berg", "", "pia@north.test")


def test_a_school_directorys_attribute_names_are_checked(
    north: School, admin_client: Client
) -> None:
    directory = north.directory

    response = admin_client.post(
        directory_url(directory), directory_form(directory, email_attribute="e mail;binary")
    )

    assert response.status_code == 200
    assert "is not an LDAP attribute name" in response.content.decode()
    directory.refresh_from_db()
    assert directory.email_attribute == "mail"
