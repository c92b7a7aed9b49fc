"""From a guest stopping to its owner's websocket hearing it.

A desktop's guest is forced off behind isard's back (libvirt `destroy`, as when a guest
powers itself off), repeatedly. Measured from the moment `destroy()` returns:
- baseline: a bare libvirt-python process registered for lifecycle events gets the event;
- ours: the owner's Channels group receives the "stopped" status; "added by isard" is
  ours minus the bare event's time, per stop (the target is under 100 ms). That path is the
  `isard_events` listener process, the status transition in the database, the audit row,
  and the broadcast through Redis.

    .venv/bin/python bench/bench_events.py [--repeat 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, URI, host_and_template, scratch_directory, setup_django

REDIS_DB = "redis://127.0.0.1:6379/7"

BARE_LISTENER = """
import sys, time, libvirt
libvirt.virEventRegisterDefaultImpl()
connection = libvirt.open(sys.argv[1])
name = sys.argv[2]
def callback(conn, domain, event, detail, opaque):
    if domain.name() == name and event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
        print(f"{time.time()}", flush=True)
connection.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, callback, None)
print("ready", flush=True)
while True:
    libvirt.virEventRunDefaultImpl()
"""


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()

    work = scratch_directory()
    setup_django(work, REDIS_DB, database_url=f"sqlite:///{work / 'bench.sqlite3'}")
    processes: list[subprocess.Popen[str]] = []
    domain_name = ""
    try:
        import libvirt
        from channels.layers import get_channel_layer

        from accounts.tests.factories import UserFactory
        from desktops.models import Desktop
        from desktops.services.provisioning import desktop_create, desktop_provision
        from desktops.services.transitions import owner_group
        from isard.core.broadcast import run

        template = host_and_template(work)
        owner = UserFactory.create(username="bench")
        desktop = desktop_create(actor=owner, template=template, name="watched")
        desktop = desktop_provision(desktop_id=desktop.pk)
        domain_name = desktop.domain_name

        env = os.environ.copy()
        ours_listener = subprocess.Popen(
            [sys.executable, "manage.py", "isard_events"],
            cwd=ROOT,
            env=env,
            text=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        bare_listener = subprocess.Popen(
            [sys.executable, "-c", BARE_LISTENER, URI, domain_name],
            text=True,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        processes += [ours_listener, bare_listener]
        assert bare_listener.stdout is not None
        assert bare_listener.stdout.readline().strip() == "ready"

        layer = get_channel_layer()
        assert layer is not None
        channel = run(layer.new_channel())
        run(layer.group_add(owner_group(owner.pk), channel))

        def wait_status(status: str, timeout: float = 30) -> float:
            deadline = time.time() + timeout
            while time.time() < deadline:
                try:
                    message = run(layer.receive(channel), timeout=max(0.1, deadline - time.time()))
                except TimeoutError:
                    continue
                if message.get("desktop", {}).get("status") == status:
                    return time.time()
            raise SystemExit(
                f"no '{status}' message within {timeout} s; the desktop is "
                f"{Desktop.objects.get(pk=desktop.pk).status}"
            )

        connection = libvirt.open(URI)
        domain = connection.lookupByName(domain_name)
        time.sleep(2)  # let the listener connect
        ours_ms: list[float] = []
        bare_ms: list[float] = []
        for _ in range(options.repeat):
            domain.create()
            wait_status("started")
            time.sleep(0.3)
            before = time.time()
            domain.destroy()
            ours_done = wait_status("stopped")
            bare_done = float(bare_listener.stdout.readline())
            ours_ms.append((ours_done - before) * 1000)
            bare_ms.append((bare_done - before) * 1000)
        added = [ours - bare for ours, bare in zip(ours_ms, bare_ms, strict=True)]
        stopped = Desktop.objects.get(pk=desktop.pk)
        report = {
            "repeat": options.repeat,
            "bare_median_ms": round(statistics.median(bare_ms), 2),
            "bare_p95_ms": round(percentile(bare_ms, 0.95), 2),
            "ours_median_ms": round(statistics.median(ours_ms), 2),
            "ours_p95_ms": round(percentile(ours_ms, 0.95), 2),
            "ours_max_ms": round(max(ours_ms), 2),
            "added_median_ms": round(statistics.median(added), 2),
            "added_p95_ms": round(percentile(added, 0.95), 2),
            "added_max_ms": round(max(added), 2),
            "final_status": stopped.status,
            "final_reason": stopped.status_reason,
        }
        print(
            f"| after destroy() returns ({options.repeat} stops) | bare event | "
            "isard websocket message | added by isard |"
        )
        print("| --- | --- | --- | --- |")
        for label, key in (("median", "median"), ("p95", "p95"), ("max", "max")):
            bare_value = max(bare_ms) if key == "max" else report[f"bare_{key}_ms"]
            print(
                f"| {label} | {bare_value:.1f} ms | {report[f'ours_{key}_ms']:.1f} ms"
                f" | {report[f'added_{key}_ms']:.1f} ms |"
            )
        if options.json:
            options.json.write_text(json.dumps(report, indent=2))
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        if domain_name:
            from hypervisors.drivers import libvirt_driver

            libvirt_driver.undefine_domain(URI, domain_name)
        import redis

        redis.Redis.from_url(REDIS_DB).flushdb()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
