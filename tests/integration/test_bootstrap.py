"""First start: this machine becomes a hypervisor whose accelerator a real boot chose."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from accounts.models import Course, User
from hypervisors.models import Hypervisor
from templates_app.demo import DEMO_TEMPLATE_NAME
from templates_app.models import Template

pytestmark = [pytest.mark.integration, pytest.mark.django_db]


def cpu_has_virtualization() -> bool:
    flags = Path("/proc/cpuinfo").read_text()
    return " vmx" in flags or " svm" in flags


@pytest.fixture
def bootstrap_settings(settings: Any, pools: Any, tiny_image: Path) -> Any:
    settings.ISARD_LIBVIRT_URI = "qemu:///system"
    settings.ISARD_LOCAL_HYPERVISOR_NAME = "local"
    settings.ISARD_ACCELERATOR = "auto"
    cache = Path(settings.ISARD_STORAGE_ROOT) / "cache"
    cache.mkdir()
    (cache / "tiny-linux.qcow2").write_bytes(tiny_image.read_bytes())
    return settings


def test_bootstrap_probes_the_accelerator_with_a_real_boot_and_loads_demo_data(
    bootstrap_settings: Any, capsys: Any
) -> None:
    call_command("isard_bootstrap")
    host = Hypervisor.objects.get(name="local")
    assert host.uri == "qemu:///system"
    assert host.state == "online"
    assert host.accelerator in ("kvm", "qemu")
    assert "booted in" in host.accelerator_detail
    # KVM is always tried first; its outcome is recorded either way.
    assert host.accelerator_detail.startswith("kvm: ")
    if not cpu_has_virtualization():
        # /dev/kvm may exist (nested), but with no vmx/svm a real guest cannot boot on KVM.
        assert host.accelerator == "qemu"
    assert Template.objects.filter(name=DEMO_TEMPLATE_NAME, status="ready").count() == 1
    assert set(User.objects.values_list("username", flat=True)) == {
        "admin",
        "teacher",
        "student1",
        "student2",
        "student3",
    }
    course = Course.objects.get(name="Demo course")
    assert course.memberships.filter(role="student").count() == 3
    assert "demo logins: admin/admin-demo" in capsys.readouterr().out

    # A second run adds nothing and keeps the probe result.
    probed_at = host.accelerator_probed_at
    call_command("isard_bootstrap")
    host.refresh_from_db()
    assert host.accelerator_probed_at == probed_at
    assert Template.objects.filter(name=DEMO_TEMPLATE_NAME).count() == 1
    assert User.objects.count() == 5


def test_an_administrators_accelerator_setting_skips_the_probe(bootstrap_settings: Any) -> None:
    bootstrap_settings.ISARD_ACCELERATOR = "qemu"
    call_command("isard_bootstrap", "--no-demo")
    host = Hypervisor.objects.get(name="local")
    assert host.accelerator == "qemu"
    assert host.accelerator_detail == "set by the administrator"
    assert not User.objects.exists()
