"""The health endpoint, against the real database, Redis, a Celery worker and libvirt."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from accounts.choices import Role
from accounts.tests.factories import UserFactory
from accounts.tokens import api_token_create
from hypervisors.choices import Accelerator, HypervisorState
from hypervisors.tests.factories import HypervisorFactory
from tests.celery_broker import celery_worker_process

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def celery_worker() -> Iterator[None]:
    """A real worker process on the test broker; health must see it answer a ping."""
    with celery_worker_process("health-test"):
        yield


@pytest.fixture
def healthy_host(transactional_db: None) -> Any:
    return HypervisorFactory.create(
        name="local",
        uri="test:///default",
        accelerator=Accelerator.QEMU,
        state=HypervisorState.ONLINE,
    )


@pytest.fixture
def admin_client(transactional_db: None) -> Client:
    """The details are for administrators; anyone else gets the status only."""
    client = Client()
    client.force_login(UserFactory.create(username="health-admin", role=Role.ADMIN))
    return client


def test_every_part_healthy_gives_200(
    celery_worker: None, healthy_host: Any, admin_client: Client
) -> None:
    response = admin_client.get("/health/")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    assert set(body["checks"]) == {
        "database",
        "processes",
        "redis",
        "celery",
        "hypervisors",
        "disks",
    }
    assert body["checks"]["celery"]["workers"]
    assert body["checks"]["hypervisors"]["hosts"]["local"]["accelerator"] == "qemu"


def test_an_unreachable_hypervisor_is_named_with_libvirts_reason(
    celery_worker: None, healthy_host: Any, admin_client: Client
) -> None:
    HypervisorFactory.create(name="gone", uri="qemu+unix:///system?socket=/nonexistent/sock")
    response = admin_client.get("/health/")
    assert response.status_code == 503
    hosts = response.json()["checks"]["hypervisors"]["hosts"]
    assert hosts["local"]["ok"] is True
    assert hosts["gone"]["ok"] is False
    assert "cannot connect" in hosts["gone"]["error"]


def test_a_wrong_redis_url_is_reported(
    settings: Any, healthy_host: Any, admin_client: Client
) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = admin_client.get("/health/")
    assert response.status_code == 503
    assert response.json()["checks"]["redis"]["ok"] is False


# --- who sees what ----------------------------------------------------------------------------


def test_an_anonymous_caller_gets_the_status_and_no_paths_or_uris(
    healthy_host: Any, settings: Any
) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # unhealthy, with an error to tell
    response = Client().get("/health/")
    assert response.status_code == 503
    assert response.json() == {"status": "unhealthy"}
    assert b"test:///default" not in response.content


@pytest.mark.parametrize("role", [Role.STUDENT, Role.TEACHER, Role.MANAGER])
def test_people_who_are_not_administrators_get_the_status_only(
    healthy_host: Any, role: Role
) -> None:
    person = UserFactory.create(username=f"health-{role}", role=role)
    client = Client()
    client.force_login(person)
    assert set(client.get("/health/").json()) == {"status"}
    _, key = api_token_create(user=person, name="monitor")
    by_token = Client().get("/health/", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert set(by_token.json()) == {"status"}


def test_an_administrators_api_token_or_the_health_token_gets_the_details(
    healthy_host: Any, settings: Any
) -> None:
    admin = UserFactory.create(username="health-root", role=Role.ADMIN)
    _, key = api_token_create(user=admin, name="monitor")
    by_api_token = Client().get("/health/", HTTP_AUTHORIZATION=f"Bearer {key}").json()
    assert by_api_token["checks"]["hypervisors"]["hosts"]["local"]["uri"] == "test:///default"

    settings.ISARD_HEALTH_TOKEN = "monitor-secret-0123456789"
    by_health_token = (
        Client().get("/health/", HTTP_AUTHORIZATION="Bearer monitor-secret-0123456789").json()
    )
    assert "checks" in by_health_token
    wrong = Client().get("/health/", HTTP_AUTHORIZATION="Bearer monitor-secret-012345678")
    assert set(wrong.json()) == {"status"}
