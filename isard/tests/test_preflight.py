"""Bad configuration gives one clear line at start, not a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command


def preflight_error() -> str:
    with pytest.raises(CommandError) as error:
        call_command("isard_preflight")
    return str(error.value)


def test_good_configuration_passes(settings: Any, tmp_path: Path, capsys: Any) -> None:
    settings.ISARD_STORAGE_ROOT = tmp_path
    settings.ISARD_LIBVIRT_URI = "test:///default"
    call_command("isard_preflight")
    assert "configuration ok" in capsys.readouterr().out


def test_missing_storage_root(settings: Any, tmp_path: Path) -> None:
    settings.ISARD_STORAGE_ROOT = tmp_path / "nope"
    settings.ISARD_LIBVIRT_URI = "test:///default"
    message = preflight_error()
    assert message == (
        f"configuration error: ISARD_STORAGE_ROOT={tmp_path / 'nope'} does not exist: "
        "create the directory or point the setting at an existing one."
    )


def test_unreachable_libvirt_uri(settings: Any, tmp_path: Path) -> None:
    settings.ISARD_STORAGE_ROOT = tmp_path
    settings.ISARD_LIBVIRT_URI = "qemu+unix:///system?socket=/nonexistent/sock"
    message = preflight_error()
    assert message.count("\n") == 0
    assert message.startswith("configuration error: ISARD_LIBVIRT_URI=qemu+unix")
    assert "start libvirtd" in message


def test_wrong_redis_url(settings: Any, tmp_path: Path) -> None:
    settings.ISARD_STORAGE_ROOT = tmp_path
    settings.ISARD_LIBVIRT_URI = "test:///default"
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    message = preflight_error()
    assert message.count("\n") == 0
    assert message.startswith(
        "configuration error: REDIS_URL=redis://127.0.0.1:1/0 does not answer"
    )


def test_every_problem_gets_its_own_line(settings: Any, tmp_path: Path) -> None:
    settings.ISARD_STORAGE_ROOT = tmp_path / "nope"
    settings.ISARD_LIBVIRT_URI = "qemu+unix:///system?socket=/nonexistent/sock"
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    lines = preflight_error().splitlines()
    assert len(lines) == 3
    assert all(line.startswith("configuration error: ") for line in lines)
