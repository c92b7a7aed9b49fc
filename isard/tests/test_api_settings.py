"""A wrong API setting stops the start with a line that names it (not a 500 later)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def manage_check(**environment: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**os.environ, **environment},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_rate_that_is_not_one_is_refused_by_name() -> None:
    result = manage_check(ISARD_API_DESKTOP_ACTION_RATE="lots")
    assert result.returncode != 0
    assert "ISARD_API_DESKTOP_ACTION_RATE='lots' is not a rate" in result.stderr


def test_negative_token_lifetime_is_refused_and_good_values_pass() -> None:
    assert "ISARD_API_TOKEN_DAYS" in manage_check(ISARD_API_TOKEN_DAYS="-1").stderr
    result = manage_check(ISARD_API_LOGIN_RATE="5/minutes", ISARD_API_TOKEN_DAYS="0")
    assert result.returncode == 0, result.stderr


def test_a_pages_rate_that_is_not_one_is_refused_by_name() -> None:
    result = manage_check(ISARD_SIGNIN_RATE="ten")
    assert result.returncode != 0
    assert "ISARD_SIGNIN_RATE='ten' is not a rate" in result.stderr
