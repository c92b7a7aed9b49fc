"""LDAP settings from the environment, and the checks that catch wrong values at start."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from accounts.ldap.checks import check_ldap_directory, check_ldap_settings
from accounts.tests.slapd import (  # noqa: F401  (fixtures)
    LdapTree,
    directory_fixture,
    free_port,
    slapd_fixture,
)
from isard import settings_ldap


@pytest.fixture
def load_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., ModuleType]]:
    """Re-read `isard.settings_ldap` with only the given ISARD_LDAP_* variables set."""

    def load(**environment: str) -> ModuleType:
        for name in [name for name in os.environ if name.startswith("ISARD_LDAP_")]:
            monkeypatch.delenv(name)
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        return importlib.reload(settings_ldap)

    yield load
    monkeypatch.undo()
    importlib.reload(settings_ldap)


def error_ids(settings_errors: list[Any]) -> list[str]:
    return [error.id for error in settings_errors]


def test_directories_are_tried_before_local_accounts(
    load_settings: Callable[..., ModuleType],
) -> None:
    """Always both: schools may have their own directory even without a platform one."""
    module = load_settings()

    assert module.AUTHENTICATION_BACKENDS == [
        "accounts.ldap.backend.IsardLDAPBackend",
        "accounts.backends.LocalAccountBackend",
    ]
    assert module.ISARD_LDAP_USER_FILTER == "(uid=%(user)s)"
    assert module.ISARD_LDAP_ROLE_GROUPS == {}


def test_with_a_server_its_settings_are_read(
    load_settings: Callable[..., ModuleType],
) -> None:
    module = load_settings(
        ISARD_LDAP_SERVER_URI="ldaps://ldap.school.example",
        ISARD_LDAP_START_TLS="false",
        ISARD_LDAP_TIMEOUT="2.5",
        ISARD_LDAP_ROLE_GROUPS=(
            "teacher=cn=teachers,ou=groups,dc=school,dc=example; "
            "Admin = cn=admins,ou=groups,dc=school,dc=example;"
        ),
    )

    assert module.ISARD_LDAP_TIMEOUT == 2.5
    assert module.ISARD_LDAP_ROLE_GROUPS == {
        "teacher": "cn=teachers,ou=groups,dc=school,dc=example",
        "admin": "cn=admins,ou=groups,dc=school,dc=example",
    }


def test_a_role_group_without_a_dn_stops_the_start(
    load_settings: Callable[..., ModuleType],
) -> None:
    with pytest.raises(ImproperlyConfigured, match="ISARD_LDAP_ROLE_GROUPS"):
        load_settings(ISARD_LDAP_ROLE_GROUPS="teacher")


def test_role_groups_may_be_one_per_line_as_in_a_school_directorys_form(
    load_settings: Callable[..., ModuleType],
) -> None:
    module = load_settings(
        ISARD_LDAP_ROLE_GROUPS="teacher=cn=teachers,dc=x\nmanager=cn=managers,dc=x\n"
    )

    assert module.ISARD_LDAP_ROLE_GROUPS == {
        "teacher": "cn=teachers,dc=x",
        "manager": "cn=managers,dc=x",
    }


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            '{"teacher": "cn=teachers,dc=x"}',
            "write role=group DN entries, one per line .* \\(not JSON\\)",
        ),
        ("teacher=teachers", "is not a DN"),
        ("teacher=cn=a,dc=x;teacher=cn=b,dc=x", "given twice"),
    ],
)
def test_role_groups_in_another_format_stop_the_start_with_the_format_to_use(
    load_settings: Callable[..., ModuleType], value: str, message: str
) -> None:
    with pytest.raises(ImproperlyConfigured, match=message):
        load_settings(ISARD_LDAP_ROLE_GROUPS=value)


def test_default_settings_pass_the_checks() -> None:
    assert check_ldap_settings() == []
    assert check_ldap_directory() == []


def test_checks_name_each_wrong_setting(settings: Any, tmp_path: Any) -> None:
    settings.ISARD_LDAP_SERVER_URI = "ldaps://ldap.school.example"
    settings.ISARD_LDAP_START_TLS = True
    settings.ISARD_LDAP_USER_SEARCH_BASE = ""
    settings.ISARD_LDAP_USER_FILTER = "(uid=alice)"
    settings.ISARD_LDAP_GROUP_TYPE = "groupOfMembers"
    settings.ISARD_LDAP_ROLE_GROUPS = {"headmaster": "cn=heads,dc=school,dc=example"}
    settings.ISARD_LDAP_GROUP_SEARCH_BASE = ""
    settings.ISARD_LDAP_CA_CERT_FILE = str(tmp_path / "missing.pem")

    errors = check_ldap_settings()

    assert error_ids(errors) == [
        "accounts.E101",
        "accounts.E102",
        "accounts.E104",
        "accounts.E105",
        "accounts.E106",
        "accounts.E107",
        "accounts.E108",
    ]
    assert "headmaster" in errors[1].msg


def test_an_unknown_uri_scheme_is_caught(settings: Any) -> None:
    settings.ISARD_LDAP_SERVER_URI = "ldap.school.example"
    settings.ISARD_LDAP_USER_SEARCH_BASE = "ou=people,dc=school,dc=example"

    assert error_ids(check_ldap_settings()) == ["accounts.E103"]


def test_runtime_check_reports_an_unreachable_directory(settings: Any) -> None:
    settings.ISARD_LDAP_SERVER_URI = f"ldap://127.0.0.1:{free_port()}"
    settings.ISARD_LDAP_TIMEOUT = 1.0

    errors = check_ldap_directory()

    assert error_ids(errors) == ["accounts.E109"]
    assert "does not answer" in errors[0].msg


def test_runtime_check_passes_against_a_working_directory(directory: LdapTree) -> None:
    assert check_ldap_settings() == []
    assert check_ldap_directory() == []
