"""Settings as a fresh install and a documented production one load them (in subprocesses).

pytest-django turns DEBUG off inside the test process whatever the settings say, so what a
fresh install does is only visible in a process of its own.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

ROOT = Path(settings.BASE_DIR)

#: Variables a developer's shell may have set that would change what is being tested.
OURS = re.compile(r"^(ISARD_|DATABASE_URL$|DJANGO_)")


def fresh_environment(tmp_path: Path, **variables: str) -> dict[str, str]:
    """This environment without any isard setting, plus `variables`."""
    environment = {name: value for name, value in os.environ.items() if not OURS.match(name)}
    environment.update(
        DJANGO_SETTINGS_MODULE="isard.settings",
        DATABASE_URL=f"sqlite:///{tmp_path / 'fresh.sqlite3'}",
        REDIS_URL=settings.REDIS_URL,
        **variables,
    )
    return environment


def run_python(code: str, environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


SHOW_SETTINGS = """
import json, django
django.setup()
from django.conf import settings
print(json.dumps({name: getattr(settings, name) for name in %r}))
"""


def loaded_settings(environment: dict[str, str], *names: str) -> dict[str, Any]:
    done = run_python(SHOW_SETTINGS % (names,), environment)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.splitlines()[-1]))


def test_debug_is_off_when_isard_debug_is_not_set(tmp_path: Path) -> None:
    assert loaded_settings(fresh_environment(tmp_path), "DEBUG") == {"DEBUG": False}
    on = fresh_environment(tmp_path, ISARD_DEBUG="true")
    assert loaded_settings(on, "DEBUG") == {"DEBUG": True}


UNKNOWN_URLS = """
import django
django.setup()
from django.test import Client
for path in ("/api/v1/desktops/1%0A/", "/no-such-page/"):
    response = Client(HTTP_HOST="localhost").get(path)
    print(path, response.status_code, response.content.decode())
"""


def test_an_unknown_url_does_not_list_the_url_patterns_on_a_fresh_install(
    tmp_path: Path,
) -> None:
    done = run_python(UNKNOWN_URLS, fresh_environment(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count(" 404 ") == 2, done.stdout[:2000]
    for leak in ("URLconf", "isard.urls", "desktops/<int:desktop_id>", "DEBUG = True"):
        assert leak not in done.stdout


def documented_production_environment() -> dict[str, str]:
    """The variables of .env.example's production block, as an operator would set them."""
    text = (ROOT / ".env.example").read_text()
    block = text.split("# --- Production", 1)[1].split("# --- end of production", 1)[0]
    variables = dict(
        line.removeprefix("# ").split("=", 1)
        for line in block.splitlines()
        if re.match(r"^# [A-Z_]+=", line)
    )
    assert {"ISARD_SECRET_KEY", "ISARD_HSTS_SECONDS", "ISARD_SECURE_COOKIES"} <= set(variables)
    # The example's key is a placeholder that says how to make one.
    variables["ISARD_SECRET_KEY"] = secrets.token_urlsafe(50)
    return variables


def test_the_deploy_check_is_clean_with_the_documented_production_settings(
    tmp_path: Path,
) -> None:
    storage = tmp_path / "storage"
    storage.mkdir()
    environment = fresh_environment(
        tmp_path,
        **documented_production_environment(),
        # This machine's stand-ins for the school's paths and hypervisor.
        ISARD_STORAGE_ROOT=str(storage),
        ISARD_PKI_DIR=str(tmp_path / "pki"),
        ISARD_LIBVIRT_URI="test:///default",
    )
    done = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues" in done.stdout


def test_the_deploy_check_warns_about_the_development_secret_key(tmp_path: Path) -> None:
    production = documented_production_environment()
    del production["ISARD_SECRET_KEY"]
    environment = fresh_environment(tmp_path, **production)
    done = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--tag", "security"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "ISARD_SECRET_KEY" in done.stderr + done.stdout


@pytest.mark.parametrize(
    ("variables", "complaint"),
    [
        ({"ISARD_TLS_PORT": "0", "ISARD_HSTS_SECONDS": "3600"}, "ISARD_TLS_PORT"),
        ({"ISARD_TLS_PORT": "0", "ISARD_SECURE_COOKIES": "true"}, "ISARD_TLS_PORT"),
        ({"ISARD_HTTPS_REDIRECT": "true"}, "ISARD_HTTPS_HOST"),
        ({"ISARD_HSTS_SECONDS": "-1"}, "ISARD_HSTS_SECONDS"),
    ],
)
def test_https_only_settings_without_https_stop_the_start(
    tmp_path: Path, variables: dict[str, str], complaint: str
) -> None:
    done = run_python(SHOW_SETTINGS % (("DEBUG",),), fresh_environment(tmp_path, **variables))
    assert done.returncode != 0
    assert "ImproperlyConfigured" in done.stderr and complaint in done.stderr


def test_https_only_settings_come_from_the_environment(tmp_path: Path) -> None:
    environment = fresh_environment(
        tmp_path,
        ISARD_HTTPS_REDIRECT="true",
        ISARD_HTTPS_HOST="vdi.school.example",
        ISARD_SECURE_COOKIES="true",
        ISARD_HSTS_SECONDS="31536000",
    )
    assert loaded_settings(
        environment,
        "SECURE_SSL_REDIRECT",
        "SECURE_SSL_HOST",
        "SESSION_COOKIE_SECURE",
        "CSRF_COOKIE_SECURE",
        "SECURE_HSTS_SECONDS",
        "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    ) == {
        "SECURE_SSL_REDIRECT": True,
        "SECURE_SSL_HOST": "vdi.school.example",
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SECURE_HSTS_SECONDS": 31536000,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
    }


def test_secrets_can_come_from_files_and_an_unreadable_one_stops_the_start(
    tmp_path: Path,
) -> None:
    key = secrets.token_urlsafe(50)
    key_file = tmp_path / "secret_key"
    key_file.write_text(key + "\n")  # as `echo` writes it
    database_file = tmp_path / "database_url"
    database_file.write_text(f"sqlite:///{tmp_path / 'from-file.sqlite3'}")
    environment = fresh_environment(
        tmp_path, ISARD_SECRET_KEY_FILE=str(key_file), DATABASE_URL_FILE=str(database_file)
    )
    del environment["DATABASE_URL"]
    loaded = loaded_settings(environment, "SECRET_KEY", "DATABASES")
    assert loaded["SECRET_KEY"] == key
    assert loaded["DATABASES"]["default"]["NAME"] == str(tmp_path / "from-file.sqlite3")
    # The variable itself wins over its file.
    direct = fresh_environment(
        tmp_path, ISARD_SECRET_KEY="x" * 60, ISARD_SECRET_KEY_FILE=str(key_file)
    )
    assert loaded_settings(direct, "SECRET_KEY") == {"SECRET_KEY": "x" * 60}
    missing = fresh_environment(tmp_path, ISARD_SECRET_KEY_FILE=str(tmp_path / "nowhere"))
    done = run_python(SHOW_SETTINGS % (("SECRET_KEY",),), missing)
    assert done.returncode != 0
    assert f"ISARD_SECRET_KEY_FILE={tmp_path / 'nowhere'}: cannot read it" in done.stderr
