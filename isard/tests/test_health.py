"""The health endpoint, against the real database, Redis, a Celery worker and libvirt."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from hypervisors.choices import Accelerator, HypervisorState
from hypervisors.tests.factories import HypervisorFactory

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def celery_worker() -> Iterator[None]:
    """A real worker process on the test broker; health must see it answer a ping."""
    from isard.celery import app

    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "isard",
            "worker",
            "--pool=solo",
            "--loglevel=WARNING",
            "--hostname=health-test@%h",
        ],
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if app.control.ping(timeout=0.5):
                break
            time.sleep(0.5)
        else:
            pytest.fail("the Celery worker did not answer within 60 s")
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def healthy_host(transactional_db: None) -> Any:
    return HypervisorFactory.create(
        name="local",
        uri="test:///default",
        accelerator=Accelerator.QEMU,
        state=HypervisorState.ONLINE,
    )


def test_every_part_healthy_gives_200(celery_worker: None, healthy_host: Any) -> None:
    response = Client().get("/health/")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "redis", "celery", "hypervisors", "disks"}
    assert body["checks"]["celery"]["workers"]
    assert body["checks"]["hypervisors"]["hosts"]["local"]["accelerator"] == "qemu"


def test_an_unreachable_hypervisor_is_named_with_libvirts_reason(
    celery_worker: None, healthy_host: Any
) -> None:
    HypervisorFactory.create(name="gone", uri="qemu+unix:///system?socket=/nonexistent/sock")
    response = Client().get("/health/")
    assert response.status_code == 503
    hosts = response.json()["checks"]["hypervisors"]["hosts"]
    assert hosts["local"]["ok"] is True
    assert hosts["gone"]["ok"] is False
    assert "cannot connect" in hosts["gone"]["error"]


def test_a_wrong_redis_url_is_reported(settings: Any, healthy_host: Any) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = Client().get("/health/")
    assert response.status_code == 503
    assert response.json()["checks"]["redis"]["ok"] is False
