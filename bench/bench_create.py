"""Create a class of desktops from one template: isard's services vs the bare baseline.

Ours, two ways:
- one by one: `desktop_create` + `desktop_provision` for each desktop (database rows and
  audit events, the Celery message, a qcow2 overlay, a libvirt definition, the status
  broadcast), as when students create their own desktops;
- a class: `desktops_create_bulk` + `desktops_provision_bulk` (one transaction of rows,
  one Celery message, overlays and definitions made concurrently), as when a teacher
  gives a course its desktops.
Baseline: the same disks and definitions with nothing else, `qemu-img create` in a
subprocess and `defineXML` from libvirt-python, in a loop.

Both run in the same process, on the same host and template, interleaved over several
rounds; the report gives medians and our time as a ratio of the baseline's.

    .venv/bin/python bench/bench_create.py [--desktops 30] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import URI, host_and_template, scratch_directory, setup_django

REDIS_DB = "redis://127.0.0.1:6379/9"  # no worker, test run or helper uses this database

BARE_XML = """<domain type='qemu'>
  <name>{name}</name><uuid>{uuid}</uuid>
  <memory unit='MiB'>192</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type><boot dev='hd'/></os>
  <features><acpi/><apic/></features>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='{disk}'/><target dev='vda' bus='virtio'/></disk>
    <graphics type='vnc' autoport='yes' listen='127.0.0.1'/>
    <video><model type='qxl'/></video>
  </devices>
</domain>"""


def settings_concurrency() -> int:
    from django.conf import settings

    return int(settings.ISARD_PROVISION_CONCURRENCY)


def bare_round(base: Path, directory: Path, count: int) -> tuple[float, list[str], list[int]]:
    import libvirt

    connection = libvirt.open(URI)
    names: list[str] = []
    sizes: list[int] = []
    started = time.perf_counter()
    for _ in range(count):
        name = f"isard-bench-{uuid.uuid4()}"
        disk = directory / f"{name}.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(disk)],
            check=True,
        )
        connection.defineXML(BARE_XML.format(name=name, uuid=uuid.uuid4(), disk=disk))
        names.append(name)
    elapsed = time.perf_counter() - started
    sizes = [(directory / f"{n}.qcow2").stat().st_blocks * 512 for n in names]
    for name in names:
        connection.lookupByName(name).undefine()
    connection.close()
    return elapsed, names, sizes


def ours_round(template: Any, owner: Any, count: int) -> tuple[float, list[int]]:
    from desktops.choices import DesktopStatus
    from desktops.models import Desktop
    from desktops.services.provisioning import desktop_create, desktop_provision

    started = time.perf_counter()
    desktops = []
    for index in range(count):
        desktop = desktop_create(actor=owner, template=template, name=f"desktop {index}")
        desktops.append(desktop_provision(desktop_id=desktop.pk))
    elapsed = time.perf_counter() - started
    assert all(d.status == DesktopStatus.STOPPED for d in desktops), [
        d.status_reason for d in desktops
    ]
    sizes = [Path(d.disk.path).stat().st_blocks * 512 for d in desktops if d.disk is not None]
    from hypervisors.drivers import libvirt_driver

    for desktop in desktops:
        libvirt_driver.undefine_domain(URI, desktop.domain_name)
    Desktop.objects.filter(pk__in=[d.pk for d in desktops]).update(status=DesktopStatus.DELETED)
    return elapsed, sizes


def bulk_round(
    template: Any, teacher: Any, course: Any, owners: list[Any]
) -> tuple[float, list[int]]:
    from desktops.choices import DesktopStatus
    from desktops.models import Desktop
    from desktops.services.provisioning import desktops_create_bulk, desktops_provision_bulk
    from hypervisors.drivers import libvirt_driver

    started = time.perf_counter()
    created = desktops_create_bulk(
        actor=teacher, template=template, owners=owners, name="class", course=course
    )
    desktops = desktops_provision_bulk(desktop_ids=[d.pk for d in created])
    elapsed = time.perf_counter() - started
    assert all(d.status == DesktopStatus.STOPPED for d in desktops), [
        d.status_reason for d in desktops
    ]
    sizes = [Path(d.disk.path).stat().st_blocks * 512 for d in desktops if d.disk]
    for desktop in desktops:
        libvirt_driver.undefine_domain(URI, desktop.domain_name)
    Desktop.objects.filter(pk__in=[d.pk for d in desktops]).update(status=DesktopStatus.DELETED)
    return elapsed, sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--desktops", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()

    work = scratch_directory()
    try:
        setup_django(work, REDIS_DB)
        from accounts.tests.factories import UserFactory

        template = host_and_template(work)
        owner = UserFactory.create(username="bench")
        from accounts.choices import CourseRole, Role
        from accounts.tests.factories import CourseFactory, MembershipFactory

        course = CourseFactory.create()
        teacher = UserFactory.create(username="bench-teacher", role=Role.TEACHER)
        MembershipFactory.create(course=course, user=teacher, role=CourseRole.TEACHER)
        students = [UserFactory.create(username=f"s{i}") for i in range(options.desktops)]
        for student in students:
            MembershipFactory.create(course=course, user=student)
        bare_dir = work / "bare"
        bare_dir.mkdir()
        assert template.disk is not None
        base = Path(template.disk.path)

        # One untimed warm-up of each, so imports and first connections are not counted.
        bare_round(base, bare_dir, 2)
        ours_round(template, owner, 2)
        bulk_round(template, teacher, course, students[:2])
        bare_times, our_times, bulk_times = [], [], []
        bare_sizes: list[int] = []
        our_sizes: list[int] = []
        for _ in range(options.rounds):
            elapsed, _names, sizes = bare_round(base, bare_dir, options.desktops)
            bare_times.append(elapsed)
            bare_sizes += sizes
            elapsed, sizes = ours_round(template, owner, options.desktops)
            our_times.append(elapsed)
            our_sizes += sizes
            elapsed, sizes = bulk_round(template, teacher, course, students)
            bulk_times.append(elapsed)
            our_sizes += sizes
        bare = statistics.median(bare_times)
        ours = statistics.median(our_times)
        bulk = statistics.median(bulk_times)
        result = {
            "desktops": options.desktops,
            "rounds": options.rounds,
            "bare_seconds": round(bare, 4),
            "ours_seconds": round(ours, 4),
            "ratio": round(ours / bare, 3),
            "class_seconds": round(bulk, 4),
            "class_ratio": round(bulk / bare, 3),
            "class_ms_per_desktop": round(bulk / options.desktops * 1000, 2),
            "all_class_seconds": [round(t, 4) for t in bulk_times],
            "provision_concurrency": settings_concurrency(),
            "bare_ms_per_desktop": round(bare / options.desktops * 1000, 2),
            "ours_ms_per_desktop": round(ours / options.desktops * 1000, 2),
            "bare_overlay_bytes": int(statistics.median(bare_sizes)),
            "ours_overlay_bytes": int(statistics.median(our_sizes)),
            "all_bare_seconds": [round(t, 4) for t in bare_times],
            "all_ours_seconds": [round(t, 4) for t in our_times],
            "database": os.environ["DATABASE_URL"].split(":")[0],
        }
        result["disk_ratio"] = round(result["ours_overlay_bytes"] / result["bare_overlay_bytes"], 3)
        rounds = options.rounds
        title = f"{options.desktops} desktops ({result['database']})"
        print(f"| {title} | bare baseline | isard | ratio |")
        print("| --- | --- | --- | --- |")
        for label, value in (("one by one", ours), ("a class at once", bulk)):
            print(
                f"| {label} (median of {rounds}) | {bare:.3f} s | {value:.3f} s"
                f" | {value / bare:.2f}x |"
            )
        print(
            f"| per desktop (one by one / class) | {result['bare_ms_per_desktop']} ms"
            f" | {result['ours_ms_per_desktop']} / {result['class_ms_per_desktop']} ms | |"
        )
        print(
            f"| overlay on disk | {result['bare_overlay_bytes']:,} B"
            f" | {result['ours_overlay_bytes']:,} B | {result['disk_ratio']:.2f}x |"
        )
        if options.json:
            options.json.write_text(json.dumps(result, indent=2))
    finally:
        import redis

        redis.Redis.from_url(REDIS_DB).flushdb()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
