"""The compose file is valid (checked offline: no Docker engine runs on CI machines)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_compose_file_is_valid_and_runs_every_isard_process() -> None:
    compose = ROOT / "docker" / "docker-compose.yml"
    check = subprocess.run(
        ["docker-compose", "-f", str(compose), "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    services = subprocess.run(
        ["docker-compose", "-f", str(compose), "config", "--services"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert {"web", "worker", "beat", "events", "postgres", "redis"} <= set(services)


def test_dockerfile_installs_the_requirements_the_project_uses() -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "requirements.txt" in dockerfile
    assert "libvirt-dev" in dockerfile
