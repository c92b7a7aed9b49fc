"""What every engine benchmark sets up: a scratch database, storage, a host and a template.

Each benchmark runs against qemu:///system with its own SQLite file, storage root and Redis
database (where no worker of a running platform listens), all removed afterwards.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
URI = "qemu:///system"


def scratch_directory() -> Path:
    """A directory qemu (running as its own user) can reach."""
    work = Path(tempfile.mkdtemp(prefix="isard-bench-", dir="/var/tmp"))
    work.chmod(0o755)
    return work


def setup_django(work: Path, redis_url: str, database_url: str | None = None) -> None:
    """Point the settings at `work` and `redis_url`, start Django and migrate.

    The database is `database_url` if given, else DATABASE_URL from the environment, else
    a SQLite file in `work`.
    """
    if database_url:
        os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{work / 'bench.sqlite3'}")
    os.environ["ISARD_STORAGE_ROOT"] = str(work / "storage")
    os.environ["REDIS_URL"] = redis_url
    os.environ["DJANGO_SETTINGS_MODULE"] = "isard.settings"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def host_and_template(work: Path) -> Any:
    """This machine as an online TCG host, and the demo guest as a ready template."""
    from desktops.fleet.monitoring import hypervisor_refresh
    from hypervisors.choices import Accelerator, HypervisorState
    from hypervisors.demo import guest_kernel_root
    from hypervisors.guest_image import build_tiny_linux
    from hypervisors.services.hosts import hypervisor_register
    from hypervisors.services.pools import storage_pools_ensure
    from templates_app.demo import demo_hardware_profile
    from templates_app.services.templates import template_register_base

    storage_pools_ensure()
    host = hypervisor_register(name="bench", uri=URI)
    host.accelerator, host.state = Accelerator.QEMU, HypervisorState.ONLINE
    host.save()
    hypervisor_refresh(hypervisor=host)
    image = build_tiny_linux(work / "tiny.qcow2", kernel_root=guest_kernel_root())
    return template_register_base(name="bench", image=image, hardware=demo_hardware_profile())


def signed_in_class(name: str, students: int, desktops_per_student: int = 1) -> list[str]:
    """A course `name` of `students`, each with desktops and a real session: the cookies.

    The sessions name the platform's own sign-in backend: a session naming a backend the
    settings do not list is no session at all, and every request would measure a redirect.
    """
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    from accounts.choices import CourseRole, Role
    from accounts.tests.factories import CourseFactory, MembershipFactory, UserFactory
    from desktops.choices import DesktopStatus
    from desktops.models import Desktop
    from templates_app.models import Template
    from templates_app.tests.factories import HardwareProfileFactory

    backend = "accounts.backends.LocalAccountBackend"
    if backend not in settings.AUTHENTICATION_BACKENDS:
        raise SystemExit(f"{backend} is not in AUTHENTICATION_BACKENDS: update the benchmark")
    hardware = HardwareProfileFactory.create()
    course = CourseFactory.create(name=f"{name} class")
    teacher = UserFactory.create(username=f"{name}-teacher", role=Role.TEACHER)
    MembershipFactory.create(course=course, user=teacher, role=CourseRole.TEACHER)
    template = Template.objects.create(
        name=f"{name} template", owner=teacher, hardware=hardware, shared_with_everyone=True
    )
    cookies = []
    for index in range(students):
        student = UserFactory.create(username=f"{name}-student-{index}")
        MembershipFactory.create(course=course, user=student)
        for number in range(desktops_per_student):
            Desktop.objects.create(
                name=f"desktop {index}.{number}",
                owner=student,
                course=course,
                template=template,
                hardware=hardware,
                status=DesktopStatus.STOPPED,
            )
        session = SessionStore()
        session[SESSION_KEY] = str(student.pk)
        session[BACKEND_SESSION_KEY] = backend
        session[HASH_SESSION_KEY] = student.get_session_auth_hash()
        session.create()
        cookies.append(f"sessionid={session.session_key}")
    return cookies


def percentile(values: list[float], share: float) -> float:
    """The value at `share` (0.95: p95) of the sorted values, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process `pid` (all its threads) so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # After the command name: state is field 3 of stat(5), utime 14 and stime 15.
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def wait_for_port(host: str, port: int, timeout: float = 30) -> None:
    """Until something accepts TCP connections on host:port."""
    import socket
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {host}:{port} after {timeout:.0f} s")
