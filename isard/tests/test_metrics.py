"""/metrics: who may scrape, the exposition format, and counters from other processes."""

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
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from accounts.tests.factories import SchoolFactory, UserFactory
from desktops.models import Desktop
from hypervisors.choices import HypervisorState
from hypervisors.tests.factories import HypervisorFactory
from isard.core import metrics
from templates_app.tests.factories import HardwareProfileFactory
from tests.celery_broker import celery_worker_process

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def fresh_metrics() -> Iterator[None]:
    metrics.reset_all()
    yield
    metrics.reset_all()


def make_desktop(*, owner: Any, status: str) -> Desktop:
    return Desktop.objects.create(
        name=f"{owner.username} {status}",
        owner=owner,
        hardware=HardwareProfileFactory.create(),
        status=status,
    )


def scrape(client: Client | None = None, **extra: Any) -> dict[str, list[Sample]]:
    response = (client or Client()).get("/metrics", **extra)
    assert response.status_code == 200, response.status_code
    assert response["Content-Type"].startswith("text/plain")
    families = text_string_to_metric_families(response.content.decode())
    return {family.name: family.samples for family in families}


def value(samples: list[Sample], name: str, **labels: str) -> float | None:
    for sample in samples:
        if sample.name == name and sample.labels == labels:
            return sample.value
    return None


# --- who may scrape ---------------------------------------------------------------------


@pytest.mark.django_db
def test_loopback_may_scrape_by_default_and_another_address_gets_404() -> None:
    assert Client().get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200
    assert Client().get("/metrics", REMOTE_ADDR="::1").status_code == 200
    assert Client().get("/metrics", REMOTE_ADDR="192.0.2.7").status_code == 404


@pytest.mark.django_db
def test_a_forwarded_header_does_not_make_an_outsider_local() -> None:
    response = Client().get("/metrics", REMOTE_ADDR="192.0.2.7", HTTP_X_FORWARDED_FOR="127.0.0.1")
    assert response.status_code == 404


@pytest.mark.django_db
def test_an_allowed_network_may_scrape(settings: Any) -> None:
    settings.ISARD_METRICS_ALLOW = ["10.20.0.0/16"]
    assert Client().get("/metrics", REMOTE_ADDR="10.20.3.4").status_code == 200
    assert Client().get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 404
    assert Client().get("/metrics", REMOTE_ADDR="::ffff:10.20.3.4").status_code == 200


@pytest.mark.django_db
def test_the_token_lets_any_address_scrape_and_a_wrong_one_does_not(settings: Any) -> None:
    settings.ISARD_METRICS_TOKEN = "s3cret-token"
    settings.ISARD_METRICS_ALLOW = []
    outside = "192.0.2.7"
    right = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-token", REMOTE_ADDR=outside)
    assert right.status_code == 200
    wrong = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-tokem", REMOTE_ADDR=outside)
    assert wrong.status_code == 404
    assert Client().get("/metrics", REMOTE_ADDR=outside).status_code == 404
    # Not even loopback, with the allow list empty.
    assert Client().get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 404


@pytest.mark.django_db
def test_without_a_configured_token_an_empty_bearer_is_refused(settings: Any) -> None:
    settings.ISARD_METRICS_TOKEN = ""
    response = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer ", REMOTE_ADDR="192.0.2.7")
    assert response.status_code == 404


@pytest.mark.django_db
def test_an_administrator_session_alone_does_not_open_metrics() -> None:
    client = Client()
    client.force_login(UserFactory.create(role="admin"))
    assert client.get("/metrics", REMOTE_ADDR="192.0.2.7").status_code == 404


def test_a_malformed_allow_list_stops_the_settings_at_start() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import isard.settings"],
        cwd=ROOT,
        env={**os.environ, "ISARD_METRICS_ALLOW": "127.0.0.1/8,not-a-network"},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "ISARD_METRICS_ALLOW" in result.stderr
    assert "not-a-network" in result.stderr


# --- what a scrape shows ------------------------------------------------------------------


@pytest.mark.django_db
def test_desktops_are_shown_by_status_and_school() -> None:
    north, south = SchoolFactory.create(name="North"), SchoolFactory.create(name="South")
    for _ in range(2):
        make_desktop(owner=UserFactory.create(school=north), status="stopped")
    make_desktop(owner=UserFactory.create(school=south), status="started")
    make_desktop(owner=UserFactory.create(school=None), status="stopped")
    families = scrape()
    desktops = families["isard_desktops"]
    assert value(desktops, "isard_desktops", status="stopped", school="North") == 2
    assert value(desktops, "isard_desktops", status="started", school="South") == 1
    assert value(desktops, "isard_desktops", status="stopped", school="") == 1
    assert value(desktops, "isard_desktops", status="started", school="North") is None


@pytest.mark.django_db
def test_hypervisors_last_sample_and_queue_depths_are_shown() -> None:
    HypervisorFactory.create(
        name="lab2",
        queue="hv.metrics-test",
        state=HypervisorState.ONLINE,
        cpu_load=0.25,
        memory_mib=2048,
        free_memory_mib=512,
        running_domains=3,
    )
    client = metrics.metrics_redis()
    client.delete("hv.metrics-test")
    client.rpush("hv.metrics-test", "one", "two")
    try:
        families = scrape()
    finally:
        client.delete("hv.metrics-test")
    host = {"hypervisor": "lab2"}
    assert value(families["isard_hypervisor_cpu_load"], "isard_hypervisor_cpu_load", **host) == 0.25
    assert (
        value(
            families["isard_hypervisor_memory_free_bytes"],
            "isard_hypervisor_memory_free_bytes",
            **host,
        )
        == 512 * 1024 * 1024
    )
    assert (
        value(
            families["isard_hypervisor_running_guests"], "isard_hypervisor_running_guests", **host
        )
        == 3
    )
    assert (
        value(
            families["isard_hypervisor_state"],
            "isard_hypervisor_state",
            hypervisor="lab2",
            state="online",
        )
        == 1
    )
    depth = families["isard_task_queue_depth"]
    assert value(depth, "isard_task_queue_depth", queue="hv.metrics-test") == 2
    assert value(depth, "isard_task_queue_depth", queue="celery") is not None


@pytest.mark.django_db
def test_counters_and_histograms_parse_with_their_labels_and_cumulative_buckets() -> None:
    metrics.count(metrics.DESKTOP_FAILURES, from_status="starting", reason="no_capacity")
    metrics.count(metrics.DESKTOP_FAILURES, from_status="starting", reason="no_capacity")
    for seconds in (0.05, 3.0, 1000.0):
        metrics.observe(metrics.DESKTOP_BOOT, seconds, hypervisor="lab2")
    families = scrape()
    failures = families["isard_desktop_failures"]
    assert (
        value(
            failures, "isard_desktop_failures_total", from_status="starting", reason="no_capacity"
        )
        == 2
    )
    boot = families["isard_desktop_boot_seconds"]
    assert value(boot, "isard_desktop_boot_seconds_bucket", hypervisor="lab2", le="0.1") == 1
    assert value(boot, "isard_desktop_boot_seconds_bucket", hypervisor="lab2", le="5.0") == 2
    assert value(boot, "isard_desktop_boot_seconds_bucket", hypervisor="lab2", le="300.0") == 2
    assert value(boot, "isard_desktop_boot_seconds_bucket", hypervisor="lab2", le="+Inf") == 3
    assert value(boot, "isard_desktop_boot_seconds_count", hypervisor="lab2") == 3
    assert value(boot, "isard_desktop_boot_seconds_sum", hypervisor="lab2") == pytest.approx(
        1003.05
    )
    # Declared metrics show (with no samples) before anything was counted.
    assert "isard_viewer_connections_opened" in families
    assert value(families["isard_metrics_redis_up"], "isard_metrics_redis_up") == 1


def test_a_counter_refuses_labels_it_does_not_declare() -> None:
    with pytest.raises(ValueError):
        metrics.count(metrics.DESKTOP_FAILURES, from_status="starting")


@pytest.mark.django_db
def test_with_redis_unreachable_a_scrape_still_shows_the_database_side(settings: Any) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    make_desktop(owner=UserFactory.create(), status="stopped")
    metrics.count(metrics.SIGN_INS)  # lost, with a warning; it does not raise
    families = scrape()
    assert value(families["isard_metrics_redis_up"], "isard_metrics_redis_up") == 0
    assert sum(sample.value for sample in families["isard_desktops"]) == 1
    assert "isard_sign_ins" not in families


# --- many processes -------------------------------------------------------------------


def _in_another_process(code: str) -> None:
    subprocess.run(
        [sys.executable, "-c", f"import django; django.setup()\n{code}"],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "isard.settings"},
        check=True,
    )


@pytest.mark.django_db
def test_counters_from_another_process_show_in_this_processes_scrape() -> None:
    metrics.count(metrics.SIGN_INS)
    _in_another_process(
        "from isard.core import metrics\n"
        "metrics.count(metrics.SIGN_INS)\n"
        "metrics.count(metrics.VIEWER_CONNECTIONS_OPENED, kind='gateway')\n"
        "metrics.observe(metrics.DESKTOP_START_TO_RUNNING, 4.0)\n"
    )
    families = scrape()
    assert value(families["isard_sign_ins"], "isard_sign_ins_total") == 2
    opened = families["isard_viewer_connections_opened"]
    assert value(opened, "isard_viewer_connections_opened_total", kind="gateway") == 1
    waits = families["isard_desktop_start_to_running_seconds"]
    assert value(waits, "isard_desktop_start_to_running_seconds_count") == 1


@pytest.fixture
def metrics_worker() -> Iterator[None]:
    """A real Celery worker on a queue of its own, in another process."""
    with celery_worker_process("metrics-test", queues="metrics-test"):
        yield


@pytest.mark.django_db
def test_a_workers_task_latency_is_counted_per_queue(metrics_worker: None) -> None:
    from isard.celery import app

    # A built-in task that needs no database (the worker does not share the test's).
    app.send_task("celery.backend_cleanup", queue="metrics-test")
    deadline = time.monotonic() + 30
    latency: float | None = None
    while time.monotonic() < deadline:
        samples = metrics.read_histograms(metrics.metrics_redis())[metrics.TASK_LATENCY.name]
        if samples:
            break
        time.sleep(0.2)
    families = scrape()
    waits = families["isard_task_latency_seconds"]
    latency = value(waits, "isard_task_latency_seconds_count", queue="metrics-test")
    assert latency == 1
    assert value(waits, "isard_task_latency_seconds_bucket", queue="metrics-test", le="+Inf") == 1


def test_a_countdown_task_waits_from_its_due_time() -> None:
    sent = 1_000_000.0
    due = "1970-01-12T13:46:50+00:00"  # sent + 10 s
    metrics.task_started(sent_at=sent, eta=due, queue="celery", now=sent + 12.0)
    [sample] = metrics.read_histograms(metrics.metrics_redis())[metrics.TASK_LATENCY.name]
    assert sample.labels == ("celery",)
    assert sample.sum == pytest.approx(2.0)


def test_a_task_sent_without_the_stamp_is_not_measured() -> None:
    metrics.task_started(sent_at=None, eta=None, queue="celery", now=5.0)
    assert metrics.read_histograms(metrics.metrics_redis())[metrics.TASK_LATENCY.name] == []
