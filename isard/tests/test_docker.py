"""The production compose file: valid (checked offline: no Docker engine runs on CI
machines), every process in it, secrets only from files, and settings that pass
`check --deploy` when the platform runs with the environment it gives."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from isard.tests.test_production_settings import fresh_environment

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker" / "docker-compose.yml"
ISARD_SERVICES = {"migrate", "web", "gateway", "worker", "worker-hv1", "beat", "events"}


def compose_config(**variables: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **variables},
    )


def resolved() -> dict[str, Any]:
    done = compose_config(ISARD_PUBLIC_HOST="vdi.school.example")
    assert done.returncode == 0, done.stderr
    return dict(yaml.safe_load(done.stdout))


def test_compose_file_is_valid_and_runs_every_isard_process() -> None:
    services = resolved()["services"]
    assert {"postgres", "redis", *ISARD_SERVICES} == set(services)
    for name, service in services.items():
        expected = "no" if name == "migrate" else "unless-stopped"
        assert service["restart"] == expected, name
    for name in ("postgres", "redis", "web", "gateway", "worker"):
        assert services[name]["healthcheck"]["test"], name
    # One public port: HTTPS, wss and the SPICE gateway's CONNECTs.
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert list(published) == ["web"]
    assert [(p["published"], p["target"]) for p in published["web"]] == [(443, 8443)]
    # The web tier and the gateway share the socket the CONNECTs are handed over on.
    for name in ("web", "gateway"):
        assert "gateway-run:/run/isard:rw" in services[name]["volumes"], name
    assert services["worker-hv1"]["profiles"] == ["hv1"]


def test_compose_file_needs_the_public_host_and_holds_no_secret() -> None:
    missing = compose_config(ISARD_PUBLIC_HOST="")
    assert missing.returncode != 0 and "set ISARD_PUBLIC_HOST" in missing.stderr
    text = COMPOSE.read_text()
    for secret in ("PASSWORD:", "SECRET_KEY:", "DATABASE_URL:", "HEALTH_TOKEN:"):
        assert f" {secret}" not in text.replace("_FILE:", ""), secret
    for name, service in resolved()["services"].items():
        environment = service.get("environment", {})
        for variable in environment:
            if any(word in variable for word in ("PASSWORD", "SECRET", "TOKEN", "DATABASE_URL")):
                assert variable.endswith("_FILE"), (name, variable)


def test_the_compose_environment_passes_the_deploy_check(tmp_path: Path) -> None:
    # The script writes next to itself: run a copy of it here.
    script = tmp_path / "make-secrets.sh"
    script.write_text((ROOT / "docker" / "make-secrets.sh").read_text())
    made = subprocess.run(["sh", str(script)], capture_output=True, text=True, check=False)
    assert made.returncode == 0, made.stderr
    secrets = tmp_path / "secrets"
    assert {p.name for p in secrets.iterdir()} == {
        "secret_key",
        "health_token",
        "metrics_token",
        "postgres_password",
        "database_url",
    }
    assert oct(secrets.stat().st_mode & 0o777) == "0o700"
    password = (secrets / "postgres_password").read_text().strip()
    assert (secrets / "database_url").read_text().strip() == (
        f"postgres://isard:{password}@postgres:5432/isard"
    )
    # Run again: nothing is replaced.
    before = (secrets / "secret_key").read_text()
    subprocess.run(["sh", str(script)], capture_output=True, check=True)
    assert (secrets / "secret_key").read_text() == before
    web = resolved()["services"]["web"]
    environment = {name: str(value) for name, value in web["environment"].items()}
    # This machine's stand-ins for the container's paths, database, Redis and hypervisor.
    (secrets / "database_url").write_text(f"sqlite:///{tmp_path / 'compose.sqlite3'}")
    for name, value in list(environment.items()):
        if value.startswith("/run/secrets/"):
            environment[name] = str(secrets / Path(value).name)
    storage = tmp_path / "storage"
    storage.mkdir()
    environment.update(
        ISARD_STORAGE_ROOT=str(storage),
        ISARD_PKI_DIR=str(tmp_path / "pki"),
        ISARD_GATEWAY_SOCKET=str(tmp_path / "gateway.sock"),
        ISARD_LIBVIRT_URI="test:///default",
    )
    del environment["REDIS_URL"]  # the tests' Redis (fresh_environment's)
    run_environment = fresh_environment(tmp_path, **environment)
    del run_environment["DATABASE_URL"]
    done = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=run_environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues" in done.stdout


def test_dockerfile_installs_the_requirements_the_project_uses() -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "requirements.txt" in dockerfile
    assert "libvirt-dev" in dockerfile
