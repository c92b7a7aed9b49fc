"""Health of every part the platform needs: database, Redis, Celery worker, hypervisors.

Anyone may ask whether the platform is healthy (a load balancer, a monitor); the details
name disk paths, hypervisor URIs and error messages, so they go only to administrators
(signed in, or with an API token) and to a monitor holding ISARD_HEALTH_TOKEN.
"""

from __future__ import annotations

import hmac
import json
import os
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse

from accounts.tokens import api_token_user
from hypervisors.choices import DiskStatus
from hypervisors.drivers import libvirt_driver
from hypervisors.models import Disk, Hypervisor
from isard.celery import app

CHECK_TIMEOUT_SECONDS = 3.0


def check_database() -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return {"ok": True, "vendor": connection.vendor}


def check_redis() -> dict[str, Any]:
    client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    finally:
        client.close()
    return {"ok": True}


#: Seconds each of the two pings waits; both together stay inside CHECK_TIMEOUT_SECONDS.
CELERY_PING_TIMEOUTS = (1.0, 1.5)


def check_celery() -> dict[str, Any]:
    # A worker finishing a task may miss one broadcast ping; a second ask tells that
    # apart from a worker that is gone.
    replies: list[Any] = []
    for timeout in CELERY_PING_TIMEOUTS:
        replies = app.control.ping(timeout=timeout) or []
        if replies:
            break
    workers = sorted(name for reply in replies for name in reply)
    return {"ok": bool(workers), "workers": workers}


#: How long the health page waits for each hypervisor's libvirt daemon.
HEALTH_LIBVIRT_TIMEOUT_SECONDS = 5.0


def check_hypervisors() -> dict[str, Any]:
    hosts: dict[str, Any] = {}
    for hypervisor in Hypervisor.objects.order_by("name"):
        entry: dict[str, Any] = {
            "uri": hypervisor.uri,
            "mode": hypervisor.mode,
            "accelerator": hypervisor.accelerator or None,
        }
        try:
            # A hung host must not hold the health page for a whole call timeout.
            libvirt_driver.ping(hypervisor.uri, timeout=HEALTH_LIBVIRT_TIMEOUT_SECONDS)
            entry["ok"] = bool(hypervisor.accelerator)
            if not hypervisor.accelerator:
                entry["error"] = (
                    "no accelerator could boot a guest: " + hypervisor.accelerator_detail
                )
        except libvirt_driver.DriverError as error:
            entry.update(ok=False, error=str(error))
        hosts[hypervisor.name] = entry
    return {"ok": bool(hosts) and all(h["ok"] for h in hosts.values()), "hosts": hosts}


#: How many missing disk files the health report names (the count is always complete).
MISSING_DISKS_LISTED = 20


def check_disks() -> dict[str, Any]:
    """Disk files in use (templates', desktops') that are gone or cannot be opened.

    One stat and open per disk file, no subprocess. A template's disk deleted behind
    isard's back shows here, before a class tries to start on it.
    """
    missing: list[str] = []
    paths = Disk.objects.filter(status=DiskStatus.READY).values_list("path", flat=True)
    for path in paths.iterator():
        try:
            with open(path, "rb") as image:
                image.read(4)
        except OSError as error:
            missing.append(f"{path} ({error.strerror or error})")
    report: dict[str, Any] = {"ok": not missing, "missing_count": len(missing)}
    if missing:
        report["missing"] = missing[:MISSING_DISKS_LISTED]
        report["error"] = f"{len(missing)} disk files are missing or unreadable"
    return report


def check_processes() -> dict[str, Any]:
    """The platform's processes as `./isardctl up`'s supervisor last wrote them.

    Without the file (the platform run by systemd, containers, a test) there is nothing to
    say. A process waiting to be started again after it died makes the platform unhealthy
    until it is back.
    """
    path = Path(os.environ.get("ISARD_PROCESS_STATE", "var/run/processes.json"))
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return {"ok": True, "supervised": False}
    processes = state.get("processes", {})
    down = sorted(name for name, entry in processes.items() if entry.get("state") != "running")
    report: dict[str, Any] = {"ok": not down, "supervised": True, "processes": processes}
    if down:
        report["error"] = f"restarting after an exit: {', '.join(down)}"
    return report


CHECKS = {
    "database": check_database,
    "processes": check_processes,
    "redis": check_redis,
    "celery": check_celery,
    "hypervisors": check_hypervisors,
    "disks": check_disks,
}


def _run_check(name: str, check: Any) -> dict[str, Any]:
    try:
        return check()
    except Exception as error:  # any failure is reported, not raised
        return {"ok": False, "error": f"{type(error).__name__}: {error}"}
    finally:
        if name in ("database", "hypervisors", "disks"):
            connection.close()


def collect_health() -> dict[str, Any]:
    # Each check runs in its own thread with a timeout, so one hung part cannot hide the others.
    results: dict[str, Any] = {}
    with ThreadPoolExecutor(max_workers=len(CHECKS)) as pool:
        futures = {name: pool.submit(_run_check, name, check) for name, check in CHECKS.items()}
        for name, future in futures.items():
            try:
                results[name] = future.result(timeout=CHECK_TIMEOUT_SECONDS)
            except FutureTimeout:
                results[name] = {
                    "ok": False,
                    "error": f"no answer in {CHECK_TIMEOUT_SECONDS:.0f} s",
                }
    healthy = all(result["ok"] for result in results.values())
    return {"status": "ok" if healthy else "unhealthy", "checks": results}


def may_see_details(request: HttpRequest) -> bool:
    """An administrator's session or API token, or the configured health token."""
    if getattr(request.user, "is_admin", False):
        return True
    kind, _, credential = request.headers.get("Authorization", "").partition(" ")
    if kind.lower() != "bearer" or not credential:
        return False
    configured = settings.ISARD_HEALTH_TOKEN
    if configured and hmac.compare_digest(credential.encode(), configured.encode()):
        return True
    found = api_token_user(key=credential)
    return found is not None and found[0].is_admin


def health_view(request: HttpRequest) -> JsonResponse:
    report = collect_health()
    status = 200 if report["status"] == "ok" else 503
    if not may_see_details(request):
        return JsonResponse({"status": report["status"]}, status=status)
    return JsonResponse(report, status=status)
