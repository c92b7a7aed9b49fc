"""A class starts its desktops at once: time until every guest has booted.

Ours: a teacher's template goes to a course of N students (`desktops_create_bulk`), then
every student presses "start" in the same second (`desktop_start` for each). A real
Celery worker (started by this script, 4 processes) runs the boot tasks; the time ends
when every guest has printed its ready line on its serial console.

Baseline: the same N overlays and domains made by hand, then libvirt-python `create()`
for each in a loop, timed until every guest has printed its ready line.

Both run on qemu:///system under the host's accelerator (TCG here), in the same run.

    .venv/bin/python bench/bench_class_start.py [--desktops 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, URI, host_and_template, scratch_directory, setup_django

REDIS_DB = "redis://127.0.0.1:6379/8"  # its own, as it flushes it
BOOT_TIMEOUT = 300.0
LOG_KEEP = ROOT / "var" / "bench-class-start"


class NotAllBooted(SystemExit):
    """Some guests never printed their ready line; the message says which, and what they did."""


def wait_all_booted(phase: str, logs: list[Path], started: float) -> list[float]:
    """Seconds from `started` until each log shows the guest's ready line.

    On a timeout the guests that did not make it are named with their domain state and
    the end of their serial log, and every log is copied to `LOG_KEEP`, so a starved
    guest can be told from a stuck one after the scratch directory is gone.
    """
    from hypervisors.guest_image import GUEST_READY_MARKER

    done: dict[int, float] = {}
    while len(done) < len(logs):
        if time.perf_counter() - started > BOOT_TIMEOUT:
            raise NotAllBooted(not_booted_report(phase, logs, done))
        for index, log in enumerate(logs):
            if index in done:
                continue
            try:
                if GUEST_READY_MARKER.encode() in log.read_bytes():
                    done[index] = time.perf_counter() - started
            except FileNotFoundError:
                pass
        time.sleep(0.05)
    return [done[i] for i in range(len(logs))]


def not_booted_report(phase: str, logs: list[Path], done: dict[int, float]) -> str:
    keep = LOG_KEEP / phase
    shutil.rmtree(keep, ignore_errors=True)
    keep.mkdir(parents=True)
    lines = [f"{phase}: only {len(done)} of {len(logs)} guests booted in {BOOT_TIMEOUT:.0f} s"]
    for index, log in enumerate(logs):
        if log.exists():
            shutil.copy(log, keep / log.name)
        if index in done:
            continue
        domain = log.name.split(".")[0]
        state = subprocess.run(
            ["virsh", "-c", URI, "domstate", "--reason", domain],
            capture_output=True,
            text=True,
        )
        tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
        lines.append(f"  {domain}: {(state.stdout or state.stderr).strip()}; log ends {tail}")
    lines.append(f"serial logs kept in {keep}")
    return "\n".join(lines)


def bare(base: Path, work: Path, count: int, domain_type: str) -> dict[str, Any]:
    import libvirt

    from hypervisors.drivers.domain_xml import DiskSpec, DomainSpec, build_domain_xml

    connection = libvirt.open(URI)
    domains, logs = [], []
    for index in range(count):
        name = f"isard-benchbare-{uuid.uuid4()}"
        disk = work / f"{name}.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(disk)],
            check=True,
        )
        log = work / f"{name}.log"
        spec = DomainSpec(
            name=name,
            uuid=str(uuid.uuid4()),
            domain_type=domain_type,
            vcpus=1,
            memory_mib=192,
            disks=(DiskSpec(path=str(disk)),),
            spice=False,
            vnc=True,
            serial_log_path=str(log),
        )
        domains.append(connection.defineXML(build_domain_xml(spec, storage_pools=(work,))))
        logs.append(log)
        del index
    try:
        started = time.perf_counter()
        for domain in domains:
            domain.create()
        requests_done = time.perf_counter() - started
        boots = wait_all_booted("bare baseline", logs, started)
    finally:
        for domain in domains:
            if domain.isActive():
                domain.destroy()
            domain.undefine()
        connection.close()
    return {"requests_seconds": requests_done, "boot_seconds": boots}


def ours(template: Any, teacher: Any, course: Any, students: list[Any]) -> dict[str, Any]:
    from desktops.choices import DesktopStatus
    from desktops.models import Desktop
    from desktops.services.domains import serial_log_path
    from desktops.services.lifecycle import desktop_start
    from desktops.services.provisioning import desktops_create_bulk, desktops_provision_bulk
    from hypervisors.drivers import libvirt_driver

    created = desktops_create_bulk(
        actor=teacher, template=template, owners=students, name="lesson", course=course
    )
    # Provisioning is measured by bench_create.py; here the class is ready before the bell.
    desktops = desktops_provision_bulk(desktop_ids=[d.pk for d in created])
    logs = [serial_log_path(d) for d in desktops]
    for log in logs:
        log.unlink(missing_ok=True)
    started = time.perf_counter()
    for desktop, student in zip(desktops, students, strict=True):
        desktop_start(actor=student, desktop=desktop)
    requests_done = time.perf_counter() - started
    try:
        boots = wait_all_booted("isard", logs, started)
        statuses = dict.fromkeys(DesktopStatus, 0)
        for desktop in Desktop.objects.filter(pk__in=[d.pk for d in desktops]):
            statuses[DesktopStatus(desktop.status)] += 1
    except NotAllBooted:
        for desktop in Desktop.objects.filter(pk__in=[d.pk for d in desktops]):
            if desktop.status != DesktopStatus.STARTED:
                print(f"{desktop.owner}: {desktop.status} {desktop.status_reason}", file=sys.stderr)
        raise
    finally:
        for desktop in desktops:
            libvirt_driver.undefine_domain(URI, desktop.domain_name)
    return {
        "requests_seconds": requests_done,
        "boot_seconds": boots,
        "statuses": {k.value: v for k, v in statuses.items() if v},
    }


def start_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    from isard.celery import app

    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "isard",
            "worker",
            "--concurrency=4",
            "--loglevel=WARNING",
            "--hostname=bench@%h",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not app.control.ping(timeout=0.5):
        if time.monotonic() > deadline:
            raise SystemExit("the Celery worker did not start")
    return worker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--desktops", type=int, default=30)
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()

    work = scratch_directory()
    setup_django(
        work,
        REDIS_DB,
        database_url=os.environ.get("BENCH_DATABASE_URL", f"sqlite:///{work / 'bench.sqlite3'}"),
    )
    worker = None
    events = None
    try:
        from accounts.choices import CourseRole, Role
        from accounts.tests.factories import CourseFactory, MembershipFactory, UserFactory

        template = host_and_template(work)
        course = CourseFactory.create()
        teacher = UserFactory.create(username="bench-teacher", role=Role.TEACHER)
        MembershipFactory.create(course=course, user=teacher, role=CourseRole.TEACHER)
        students = [UserFactory.create(username=f"s{i}") for i in range(options.desktops)]
        for student in students:
            MembershipFactory.create(course=course, user=student)

        env = os.environ.copy()
        worker = start_worker(env)
        events = subprocess.Popen(
            [sys.executable, "manage.py", "isard_events"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        bare_dir = work / "bare"
        bare_dir.mkdir()
        assert template.disk is not None
        baseline = bare(Path(template.disk.path), bare_dir, options.desktops, "qemu")
        result = ours(template, teacher, course, students)

        def summary(run: dict[str, Any]) -> tuple[float, float]:
            boots = sorted(run["boot_seconds"])
            return boots[len(boots) // 2], boots[-1]

        bare_median, bare_last = summary(baseline)
        our_median, our_last = summary(result)
        report = {
            "desktops": options.desktops,
            "bare_all_booted_seconds": round(bare_last, 2),
            "ours_all_booted_seconds": round(our_last, 2),
            "ratio": round(our_last / bare_last, 3),
            "bare_median_boot_seconds": round(bare_median, 2),
            "ours_median_boot_seconds": round(our_median, 2),
            "ours_start_requests_seconds": round(result["requests_seconds"], 3),
            "ours_statuses_when_all_booted": result["statuses"],
        }
        print(f"| {options.desktops} guests start at once | bare baseline | isard | ratio |")
        print("| --- | --- | --- | --- |")
        print(
            f"| all booted | {bare_last:.2f} s | {our_last:.2f} s | {our_last / bare_last:.2f}x |"
        )
        print(f"| median guest booted | {bare_median:.2f} s | {our_median:.2f} s | |")
        print(f"| statuses when all booted | | {result['statuses']} | |")
        if options.json:
            options.json.write_text(json.dumps(report, indent=2))
    finally:
        for process in (worker, events):
            if process is not None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=60)
        import redis

        redis.Redis.from_url(REDIS_DB).flushdb()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
