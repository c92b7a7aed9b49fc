"""RDP files for guests that report an IP address, on libvirt's test driver.

The test driver reports an address on every interface attached to a libvirt network (as a
guest agent or a DHCP lease would), and none for a guest without a network: the two cases
the service must tell apart. A real guest without an agent is in
tests/integration/test_viewers.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from accounts.choices import Role
from accounts.tests.factories import UserFactory
from conftest import make_qcow2
from desktops.choices import DesktopStatus
from desktops.models import Desktop, DesktopEvent
from desktops.services.lifecycle import desktop_start
from desktops.services.provisioning import desktop_create
from desktops.viewer.checks import ViewerUnavailableError
from desktops.viewer.files import viewer_rdp_build
from hypervisors.drivers import libvirt_driver
from isard.core.errors import NotFoundError
from templates_app.services.templates import template_register_base
from templates_app.tests.factories import HardwareProfileFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def ana() -> Any:
    return UserFactory.create(role=Role.STUDENT, username="ana")


def started_desktop(
    run: Any, owner: Any, tmp_path: Path, *, networks: list[str], name: str = "Windows"
) -> Desktop:
    template = template_register_base(
        name=f"{name} template",
        image=make_qcow2(tmp_path / f"{name}.qcow2"),
        hardware=HardwareProfileFactory.create(networks=networks),
    )
    desktop = run(desktop_create, actor=owner, template=template, name=name)
    desktop.refresh_from_db()
    run(desktop_start, actor=owner, desktop=desktop)
    desktop.refresh_from_db()
    assert desktop.status == DesktopStatus.STARTED, desktop.status_reason
    return desktop


def test_the_rdp_file_points_at_the_address_the_guest_reports(
    run: Any, test_hypervisor: Any, ana: Any, tmp_path: Path
) -> None:
    desktop = started_desktop(run, ana, tmp_path, networks=["default"])
    [reported] = libvirt_driver.domain_ip_addresses(test_hypervisor.uri, desktop.domain_name)
    rdp = viewer_rdp_build(actor=ana, desktop=desktop)
    assert rdp.address == reported.address
    assert rdp.filename == "Windows.rdp"
    lines = rdp.content.split("\r\n")
    assert lines[0] == f"full address:s:{reported.address}"
    assert "prompt for credentials:i:1" in lines and lines[-1] == ""
    assert "\n" not in rdp.content.replace("\r\n", "")
    assert not any(line.startswith("gateway") for line in lines)
    assert DesktopEvent.objects.filter(
        desktop=desktop, reason__startswith=f"RDP file issued for {reported.address}"
    ).exists()


def test_the_rdp_file_goes_through_the_configured_gateway(
    run: Any, test_hypervisor: Any, ana: Any, tmp_path: Path, settings: Any
) -> None:
    settings.ISARD_RDP_GATEWAY = "rdgw.school.example"
    desktop = started_desktop(run, ana, tmp_path, networks=["default"])
    lines = viewer_rdp_build(actor=ana, desktop=desktop).content.split("\r\n")
    assert "gatewayhostname:s:rdgw.school.example" in lines
    assert "gatewayusagemethod:i:1" in lines


def test_a_guest_without_an_address_gets_a_clear_refusal(
    run: Any, test_hypervisor: Any, ana: Any, tmp_path: Path
) -> None:
    desktop = started_desktop(run, ana, tmp_path, networks=[])
    assert libvirt_driver.domain_ip_addresses(test_hypervisor.uri, desktop.domain_name) == []
    with pytest.raises(ViewerUnavailableError) as refused:
        viewer_rdp_build(actor=ana, desktop=desktop)
    assert refused.value.message == (
        "The desktop “Windows” has not reported an IP address: install the QEMU guest agent "
        "in the guest (or in its template), or wait until it has finished booting and try "
        "again."
    )
    assert refused.value.extra["reason"] == "no-address"
    assert DesktopEvent.objects.filter(
        desktop=desktop, reason__startswith="viewer refused to ana (no-address)"
    ).exists()


def test_another_student_gets_no_rdp_file(
    run: Any, test_hypervisor: Any, ana: Any, tmp_path: Path
) -> None:
    desktop = started_desktop(run, ana, tmp_path, networks=["default"])
    ben = UserFactory.create(role=Role.STUDENT, username="ben")
    with pytest.raises(NotFoundError, match="No such desktop"):
        viewer_rdp_build(actor=ben, desktop=desktop)
    response = Client()
    response.force_login(ben)
    refused = response.get(reverse("desktop-viewer-rdp", args=[desktop.pk]))
    assert refused.status_code == 404
    assert "full address" not in refused.content.decode()


def test_a_stopped_desktop_has_no_rdp_file(
    run: Any, test_hypervisor: Any, ana: Any, tmp_path: Path
) -> None:
    desktop = started_desktop(run, ana, tmp_path, networks=["default"])
    Desktop.objects.filter(pk=desktop.pk).update(status=DesktopStatus.STOPPED)
    desktop.refresh_from_db()
    with pytest.raises(ViewerUnavailableError, match="is stopped"):
        viewer_rdp_build(actor=ana, desktop=desktop)


def test_the_rdp_download_is_an_uncached_attachment_or_the_reason_why_not(
    run: Any, test_hypervisor: Any, ana: Any, tmp_path: Path
) -> None:
    with_network = started_desktop(run, ana, tmp_path, networks=["default"], name="Win")
    without = started_desktop(run, ana, tmp_path, networks=[], name="Offline")
    client = Client()
    client.force_login(ana)
    response = client.get(reverse("desktop-viewer-rdp", args=[with_network.pk]))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/x-rdp"
    assert response["Content-Disposition"] == 'attachment; filename="Win.rdp"'
    assert "no-store" in response["Cache-Control"]
    assert response.content.decode().startswith("full address:s:")
    refused = client.get(reverse("desktop-viewer-rdp", args=[without.pk]))
    assert refused.status_code == 409
    assert "install the QEMU guest agent" in refused.content.decode()
    assert Client().get(reverse("desktop-viewer-rdp", args=[without.pk])).status_code == 302
