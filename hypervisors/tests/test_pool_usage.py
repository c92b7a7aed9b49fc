"""The pool shows its use: recorded disks, their real size, and the file system's room."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from accounts.choices import Role
from accounts.tests.factories import UserFactory
from desktops.choices import DesktopStatus
from desktops.services.lifecycle import desktop_start
from desktops.services.provisioning import desktop_create
from desktops.services.reconciliation import desktop_sync_state
from hypervisors.choices import PoolPurpose
from hypervisors.drivers import libvirt_driver
from hypervisors.selectors import storage_pool_usage


@pytest.mark.django_db
def test_pool_usage_counts_overlays_by_what_they_really_take(
    run: Any, test_hypervisor: Any, base_template: Any, pools: dict[str, Any]
) -> None:
    student = UserFactory.create(role=Role.STUDENT)
    desktop_pool = pools[PoolPurpose.DESKTOPS]
    empty = storage_pool_usage(desktop_pool)
    assert empty.disks == 0 and empty.used_bytes == 0
    assert empty.filesystem_total_bytes and empty.filesystem_free_bytes

    desktop = run(desktop_create, actor=student, template=base_template, name="e")
    desktop.refresh_from_db()
    assert desktop.disk is not None
    after = storage_pool_usage(desktop_pool)
    assert after.disks == 1
    # An overlay takes a few hundred KiB, while it offers the template's whole size.
    assert 0 < after.used_bytes < 2 * 1024 * 1024
    assert after.virtual_bytes == base_template.disk.virtual_size_bytes


@pytest.mark.django_db
def test_a_stopped_desktop_records_what_its_guest_wrote(
    run: Any, test_hypervisor: Any, base_template: Any
) -> None:
    student = UserFactory.create(role=Role.STUDENT)
    desktop = run(desktop_create, actor=student, template=base_template, name="l")
    desktop.refresh_from_db()
    run(desktop_start, actor=student, desktop=desktop)
    desktop.refresh_from_db()
    assert desktop.status == DesktopStatus.STARTED and desktop.disk is not None
    before = desktop.disk.actual_size_bytes
    # What a guest writes, seen from the host: the overlay grows by 8 MiB.
    with Path(desktop.disk.path).open("ab") as overlay:
        overlay.write(b"\1" * 8 * 1024 * 1024)
    desktop = desktop_sync_state(
        desktop=desktop, state=libvirt_driver.DomainState.SHUTOFF, source="test"
    )
    assert desktop.status == DesktopStatus.STOPPED
    assert desktop.disk is not None
    desktop.disk.refresh_from_db()
    assert desktop.disk.actual_size_bytes >= before + 8 * 1024 * 1024
