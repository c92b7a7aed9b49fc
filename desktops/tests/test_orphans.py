"""Leftovers: domains no live desktop owns are removed after a grace, files no row names
are reported and removed only when an administrator says so (`desktops.services.orphans`)."""

from __future__ import annotations

import os
import time
import uuid
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from desktops.choices import DesktopStatus
from desktops.models import Desktop, DesktopEvent
from desktops.services.lifecycle import desktop_start
from desktops.services.orphans import domains_remove_orphans, orphan_files
from desktops.services.provisioning import desktop_create
from desktops.services.reconciliation import desktops_reconcile
from desktops.services.recycle_bin import desktop_delete
from hypervisors.drivers import libvirt_driver
from hypervisors.drivers.domain_xml import DomainSpec, build_domain_xml
from hypervisors.models import HypervisorEvent
from hypervisors.selectors import installation_uuid

pytestmark = pytest.mark.django_db
S = DesktopStatus
URI = "test:///default"


@pytest.fixture
def student() -> Any:
    from accounts.tests.factories import UserFactory

    return UserFactory.create()


@pytest.fixture
def desktop(run: Any, test_hypervisor: Any, base_template: Any, student: Any) -> Desktop:
    base_template.shared_with_everyone = True
    base_template.save()
    made = run(desktop_create, actor=student, template=base_template, name="mine")
    made.refresh_from_db()
    assert made.status == S.STOPPED
    return made


def _define(name: str, installation: str | None) -> None:
    metadata = {"desktop": name, "owner": "x"}
    if installation is not None:
        metadata["installation"] = installation
    libvirt_driver.define_domain(
        URI,
        build_domain_xml(
            DomainSpec(
                name=name,
                uuid=str(uuid.uuid4()),
                domain_type="qemu",
                vcpus=1,
                memory_mib=64,
                spice=False,
                vnc=False,
                metadata=metadata,
                disks=(),
            ),
            storage_pools=(),
        ),
    )


def _later(seconds: float) -> Any:
    return timezone.now() + timedelta(seconds=seconds)


def test_a_deleted_desktops_leftover_domain_goes_after_the_grace_with_an_event(
    run: Any, desktop: Desktop, student: Any, test_hypervisor: Any, settings: Any
) -> None:
    settings.ISARD_ORPHAN_GRACE_SECONDS = 60
    run(desktop_delete, actor=student, desktop=desktop)
    desktop.refresh_from_db()
    assert desktop.status == S.DELETED
    # A define given up on that finished late: the domain is back for a recycled desktop.
    libvirt_driver.define_domain(URI, _xml_for(desktop))
    states = libvirt_driver.list_domain_states(URI)
    assert desktop.domain_name in states
    assert domains_remove_orphans(hypervisor=test_hypervisor, states=states) == 0  # first seen
    assert domains_remove_orphans(hypervisor=test_hypervisor, states=states, now=_later(30)) == 0
    assert desktops_reconcile(hypervisor=test_hypervisor, now=_later(61)) == 0
    assert desktop.domain_name not in libvirt_driver.list_domain_states(URI)
    event = DesktopEvent.objects.filter(desktop=desktop).last()
    assert event is not None and "its desktop is in the recycle bin" in event.reason
    assert desktop.disk is not None and Path(desktop.disk.path).exists()  # the bin keeps it


def _xml_for(desktop: Desktop) -> str:
    from desktops.services.domains import desktop_domain_spec, desktop_domain_xml

    return desktop_domain_xml(desktop_domain_spec(desktop, desktop.hypervisor or _any_host()))


def _any_host() -> Any:
    from hypervisors.models import Hypervisor

    return Hypervisor.objects.get()


def test_a_live_desktops_domain_and_a_running_leftover_are_never_removed(
    run: Any, desktop: Desktop, student: Any, test_hypervisor: Any, settings: Any
) -> None:
    settings.ISARD_ORPHAN_GRACE_SECONDS = 0
    run(desktop_start, actor=student, desktop=desktop)
    desktops_reconcile(hypervisor=test_hypervisor, now=_later(1))
    assert desktop.domain_name in libvirt_driver.list_domain_states(URI)
    # The desktop goes to the bin while its guest runs on (a bug, a person's virsh): kept.
    Desktop.objects.filter(pk=desktop.pk).update(status=S.DELETED)
    states = libvirt_driver.list_domain_states(URI)
    assert states[desktop.domain_name] == libvirt_driver.DomainState.RUNNING
    assert domains_remove_orphans(hypervisor=test_hypervisor, states=states, now=_later(5)) == 0
    assert desktop.domain_name in libvirt_driver.list_domain_states(URI)
    libvirt_driver.undefine_domain(URI, desktop.domain_name)


def test_an_unknown_domain_goes_only_if_this_installation_defined_it(
    test_hypervisor: Any, settings: Any
) -> None:
    settings.ISARD_ORPHAN_GRACE_SECONDS = 60
    ours, theirs, older = (f"isard-{uuid.uuid4()}" for _ in range(3))
    _define(ours, installation_uuid())
    _define(theirs, str(uuid.uuid4()))  # another installation on the same libvirt
    _define(older, None)  # defined before domains carried an installation
    try:
        states = libvirt_driver.list_domain_states(URI)
        assert domains_remove_orphans(hypervisor=test_hypervisor, states=states) == 0
        assert domains_remove_orphans(hypervisor=test_hypervisor, states=states, now=_later(61))
        left = libvirt_driver.list_domain_states(URI)
        assert ours not in left and theirs in left and older in left
        assert HypervisorEvent.objects.filter(message__contains=ours).exists()
    finally:
        for name in (ours, theirs, older):
            libvirt_driver.undefine_domain(URI, name)


def test_files_no_row_names_are_listed_after_the_grace_and_removed_when_confirmed(
    desktop: Desktop, pools: dict[str, Any], settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.ISARD_ORPHAN_GRACE_SECONDS = 60
    stray = Path(pools["desktops"].path) / f"{uuid.uuid4()}.qcow2"
    stray.write_bytes(b"x" * 4096)
    young = Path(pools["media"].path) / "just-now.iso"
    young.write_bytes(b"y")
    old = time.time() - 3600
    os.utime(stray, (old, old))
    found = [orphan.path for orphan in orphan_files()]
    assert found == [stray]  # not the desktop's own disk, not the file made a moment ago
    assert desktop.disk is not None and Path(desktop.disk.path).exists()

    output = StringIO()
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    with pytest.raises(CommandError, match="nothing was removed"):
        call_command("isard_orphans", "--delete", stdout=output)
    assert stray.exists() and str(stray) in output.getvalue()
    call_command("isard_orphans", "--delete", "--yes", stdout=StringIO())
    assert not stray.exists() and young.exists()
    assert Path(desktop.disk.path).exists()
