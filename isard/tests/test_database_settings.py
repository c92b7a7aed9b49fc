"""How the database is reached: a pool of connections per process on PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

READ_DATABASE = (
    "import json, django; django.setup(); from django.conf import settings; "
    "print(json.dumps(settings.DATABASES['default'], default=str))"
)


def database_settings(**environment: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", READ_DATABASE],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "isard.settings", **environment},
        capture_output=True,
        text=True,
        timeout=120,
    )


def default_database(**environment: str) -> dict[str, Any]:
    result = database_settings(**environment)
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = json.loads(result.stdout)
    return loaded


def test_postgresql_gets_a_pool_of_the_configured_size_and_sqlite_none() -> None:
    url = "postgres://isard@db.example:5432/isard"
    pooled = default_database(DATABASE_URL=url, ISARD_DB_POOL_SIZE="5")
    assert pooled["OPTIONS"]["pool"] == {"min_size": 1, "max_size": 5, "timeout": 10}
    assert "pool" not in default_database(DATABASE_URL=url, ISARD_DB_POOL_SIZE="0")["OPTIONS"]
    sqlite = default_database(DATABASE_URL="sqlite:////tmp/isard-settings-test.sqlite3")
    assert "pool" not in sqlite["OPTIONS"]


def test_a_pool_with_persistent_connections_is_refused_with_what_to_change() -> None:
    result = database_settings(DATABASE_URL="postgres://isard@db.example/isard?conn_max_age=60")
    assert result.returncode != 0
    assert "CONN_MAX_AGE (conn_max_age in DATABASE_URL) and the connection pool" in result.stderr
