"""Viewer tokens, the viewer pages and the .vv file: who may open which screen, and when."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.choices import Role
from accounts.tests.factories import UserFactory
from desktops.choices import DesktopStatus
from desktops.models import Desktop, DesktopEvent, GatewayCredential, ViewerProtocol, ViewerToken
from desktops.services.domains import desktop_domain_spec
from desktops.services.provisioning import desktop_create
from desktops.viewer.checks import ViewerRefusedError, ViewerUnavailableError
from desktops.viewer.files import viewer_vv_build
from desktops.viewer.services import (
    graphics_host,
    hash_token,
    viewer_tls_required,
    viewer_token_consume,
    viewer_token_issue,
)
from hypervisors import tls
from hypervisors.drivers import libvirt_driver
from hypervisors.tests.factories import HypervisorFactory
from isard.core.errors import NotFoundError
from templates_app.tests.factories import HardwareProfileFactory

pytestmark = pytest.mark.django_db

PASSWORD = "Pa55-w0r"


@pytest.fixture
def ana() -> Any:
    return UserFactory.create(role=Role.STUDENT, username="ana")


@pytest.fixture
def ben() -> Any:
    return UserFactory.create(role=Role.STUDENT, username="ben")


def running_desktop(owner: Any, **fields: Any) -> Desktop:
    values: dict[str, Any] = {
        "name": f"{owner.username}'s desktop",
        "owner": owner,
        "hardware": HardwareProfileFactory.create(),
        "status": DesktopStatus.STARTED,
        "hypervisor": HypervisorFactory.create(),
        "graphics_password": PASSWORD,
    }
    values.update(fields)
    return Desktop.objects.create(**values)


@pytest.fixture
def anas_desktop(ana: Any) -> Desktop:
    return running_desktop(ana)


@pytest.fixture
def vnc_port(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """libvirt reports VNC port 5907 (and SPICE TLS 5908) for any running guest."""
    calls: list[tuple[str, str]] = []

    def ports(uri: str, name: str) -> libvirt_driver.GraphicsPorts:
        calls.append((uri, name))
        return libvirt_driver.GraphicsPorts(
            spice_port=None, spice_tls_port=5908, vnc_port=5907, listen="127.0.0.1"
        )

    monkeypatch.setattr(libvirt_driver, "graphics_ports", ports)
    return calls


# --- issuing --------------------------------------------------------------------------------


def test_owner_gets_a_single_use_token_for_their_running_desktop_but_never_its_password(
    ana: Any, anas_desktop: Desktop
) -> None:
    access = viewer_token_issue(actor=ana, desktop=anas_desktop)
    assert PASSWORD not in repr(access)
    assert access.websocket_path == f"/ws/viewer/{access.token}/"
    record = ViewerToken.objects.get()
    # Only a hash is stored: the database alone opens no screen.
    assert record.key_hash == hash_token(access.token) != access.token
    assert record.user == ana and record.desktop == anas_desktop
    assert record.protocol == ViewerProtocol.BROWSER_VNC
    assert record.used_at is None
    assert timedelta(seconds=30) <= record.expires_at - record.created_at <= timedelta(minutes=5)


def test_student_cannot_open_the_viewer_of_another_students_desktop(
    ben: Any, anas_desktop: Desktop, caplog: pytest.LogCaptureFixture
) -> None:
    events = DesktopEvent.objects.filter(desktop=anas_desktop).count()
    with (
        caplog.at_level(logging.WARNING, logger="desktops.viewer.checks"),
        pytest.raises(NotFoundError) as refused,
    ):
        viewer_token_issue(actor=ben, desktop=anas_desktop)
    # As if there were no such desktop: no name, no reason, nothing in its history.
    assert refused.value.message == "No such desktop." and refused.value.extra == {}
    assert not ViewerToken.objects.exists()
    assert DesktopEvent.objects.filter(desktop=anas_desktop).count() == events
    assert f"viewer refused (not-visible): user=ben desktop={anas_desktop.pk}" in caplog.text


def test_even_an_administrator_gets_no_viewer_or_password_for_a_students_desktop(
    anas_desktop: Desktop,
) -> None:
    admin = UserFactory.create(role=Role.ADMIN)
    with pytest.raises(ViewerRefusedError):
        viewer_token_issue(actor=admin, desktop=anas_desktop)


@pytest.mark.parametrize("status", [DesktopStatus.STOPPED, DesktopStatus.STARTING])
def test_a_desktop_that_is_not_running_has_no_viewer(ana: Any, status: DesktopStatus) -> None:
    desktop = running_desktop(ana, status=status)
    with pytest.raises(ViewerUnavailableError) as refused:
        viewer_token_issue(actor=ana, desktop=desktop)
    assert refused.value.extra["reason"] == "not-running"
    assert "start it" in refused.value.message


def test_a_desktop_without_vnc_has_no_browser_viewer(ana: Any) -> None:
    desktop = running_desktop(ana, hardware=HardwareProfileFactory.create(graphics_vnc=False))
    with pytest.raises(ViewerUnavailableError, match="no VNC display"):
        viewer_token_issue(actor=ana, desktop=desktop)


# --- spending -------------------------------------------------------------------------------


def test_a_token_opens_exactly_the_vnc_port_of_its_desktop_once(
    ana: Any, anas_desktop: Desktop, vnc_port: list[tuple[str, str]]
) -> None:
    running_desktop(ana, name="another desktop of ana")
    access = viewer_token_issue(actor=ana, desktop=anas_desktop)
    target = viewer_token_consume(token=access.token, user=ana, client="127.0.0.1:5555")
    assert (target.host, target.port) == ("127.0.0.1", 5907)
    assert target.desktop_id == anas_desktop.pk
    assert vnc_port == [(anas_desktop.hypervisor.uri, anas_desktop.domain_name)]  # type: ignore[union-attr]
    record = ViewerToken.objects.get()
    assert record.used_at is not None and record.used_from == "127.0.0.1:5555"
    assert DesktopEvent.objects.filter(
        desktop=anas_desktop, reason__startswith="browser viewer opened"
    ).exists()

    with pytest.raises(ViewerRefusedError) as refused:
        viewer_token_consume(token=access.token, user=ana)
    assert refused.value.extra["reason"] == "used"


def test_a_students_token_is_refused_to_another_student_and_stays_unspent(
    ana: Any, ben: Any, anas_desktop: Desktop, vnc_port: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    access = viewer_token_issue(actor=ana, desktop=anas_desktop)
    with (
        caplog.at_level(logging.WARNING, logger="desktops.viewer.checks"),
        pytest.raises(ViewerRefusedError) as refused,
    ):
        viewer_token_consume(token=access.token, user=ben, client="10.9.8.7:1")
    assert refused.value.extra["reason"] == "other-user"
    assert "user=ben" in caplog.text and "client=10.9.8.7:1" in caplog.text
    assert access.token not in caplog.text
    assert vnc_port == []
    # Ana can still use the link she was given.
    assert viewer_token_consume(token=access.token, user=ana).port == 5907


def test_an_expired_token_is_refused(ana: Any, anas_desktop: Desktop, vnc_port: list[Any]) -> None:
    access = viewer_token_issue(actor=ana, desktop=anas_desktop)
    later = access.expires_at + timedelta(seconds=1)
    with pytest.raises(ViewerRefusedError) as refused:
        viewer_token_consume(token=access.token, user=ana, now=later)
    assert refused.value.extra["reason"] == "expired"
    assert "expired" in refused.value.message
    assert vnc_port == []


@pytest.mark.parametrize("token", ["", "nonsense", "x" * 43])
def test_an_unknown_token_is_refused(ana: Any, token: str) -> None:
    with pytest.raises(ViewerRefusedError) as refused:
        viewer_token_consume(token=token, user=ana)
    assert refused.value.extra["reason"] == "unknown-token"


def test_an_anonymous_connection_is_refused(ana: Any, anas_desktop: Desktop) -> None:
    from django.contrib.auth.models import AnonymousUser

    access = viewer_token_issue(actor=ana, desktop=anas_desktop)
    with pytest.raises(ViewerRefusedError) as refused:
        viewer_token_consume(token=access.token, user=AnonymousUser())
    assert refused.value.extra["reason"] == "anonymous"


def test_a_token_for_a_desktop_stopped_meanwhile_is_spent_and_refused(
    ana: Any, anas_desktop: Desktop, vnc_port: list[Any]
) -> None:
    access = viewer_token_issue(actor=ana, desktop=anas_desktop)
    Desktop.objects.filter(pk=anas_desktop.pk).update(status=DesktopStatus.STOPPED)
    with pytest.raises(ViewerUnavailableError) as refused:
        viewer_token_consume(token=access.token, user=ana)
    assert refused.value.extra["reason"] == "not-running"
    assert ViewerToken.objects.get().used_at is not None
    assert vnc_port == []


def test_a_spice_audit_record_is_not_a_browser_token(
    ana: Any, anas_desktop: Desktop, vnc_port: list[Any]
) -> None:
    now = timezone.now()
    ViewerToken.objects.create(
        key_hash=hash_token("spice-ticket"),
        user=ana,
        desktop=anas_desktop,
        protocol=ViewerProtocol.SPICE_TLS,
        created_at=now,
        expires_at=now + timedelta(minutes=1),
    )
    with pytest.raises(ViewerRefusedError) as refused:
        viewer_token_consume(token="spice-ticket", user=ana)
    assert refused.value.extra["reason"] == "wrong-protocol"


@pytest.mark.parametrize(
    ("uri", "listen", "expected"),
    [
        ("qemu:///system", "127.0.0.1", "127.0.0.1"),
        ("qemu:///system", "0.0.0.0", "127.0.0.1"),
        ("qemu+ssh://root@hv2.school.example/system", "0.0.0.0", "hv2.school.example"),
        ("qemu+tls://hv3.school.example/system", "::", "hv3.school.example"),
        ("qemu+ssh://root@hv2.school.example/system", "192.0.2.7", "192.0.2.7"),
        ("qemu+unix:///session?socket=/run/user/1001/libvirt/libvirt-sock", None, "127.0.0.1"),
    ],
)
def test_the_graphics_host_is_the_listen_address_or_the_hypervisors_name(
    uri: str, listen: str | None, expected: str
) -> None:
    assert graphics_host(hypervisor=HypervisorFactory.build(uri=uri), listen=listen) == expected


# --- views --------------------------------------------------------------------------------


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_viewer_page_gives_the_owner_a_fresh_token_uncached_and_no_password(
    ana: Any, anas_desktop: Desktop
) -> None:
    response = client_for(ana).get(reverse("desktop-viewer", args=[anas_desktop.pk]))
    assert response.status_code == 200
    body = response.content.decode()
    record = ViewerToken.objects.get()
    # The proxy signs in to the screen itself: the owner's browser never holds the password.
    assert PASSWORD not in body
    assert "/ws/viewer/" in body and "vendor/novnc/core/rfb.js" in body
    assert "no-store" in response["Cache-Control"]
    assert record.user == ana and record.desktop == anas_desktop


def test_viewer_page_says_where_each_way_of_opening_works(
    ana: Any, anas_desktop: Desktop, settings: Any
) -> None:
    settings.ISARD_RDP_GATEWAY = ""
    body = client_for(ana).get(reverse("desktop-viewer", args=[anas_desktop.pk])).content.decode()
    assert "Other ways to open it" in body
    assert "only from the school's own network (this platform has no RD Gateway)" in body
    settings.ISARD_RDP_GATEWAY = "rdgw.school.example"
    body = client_for(ana).get(reverse("desktop-viewer", args=[anas_desktop.pk])).content.decode()
    assert "through the school's RD Gateway rdgw.school.example" in body
    assert "no RD Gateway" not in body


def test_viewer_page_of_another_students_desktop_is_refused_without_the_password(
    ben: Any, anas_desktop: Desktop
) -> None:
    response = client_for(ben).get(reverse("desktop-viewer", args=[anas_desktop.pk]))
    assert response.status_code == 404
    body = response.content.decode()
    assert "No such desktop" in body and anas_desktop.name not in body
    assert PASSWORD not in body and "/ws/viewer/" not in body
    assert not ViewerToken.objects.exists()


def test_viewer_page_of_a_stopped_desktop_says_so(ana: Any) -> None:
    desktop = running_desktop(ana, status=DesktopStatus.STOPPED)
    response = client_for(ana).get(reverse("desktop-viewer", args=[desktop.pk]))
    assert response.status_code == 409
    assert "is stopped" in response.content.decode()


def test_viewer_pages_need_a_signed_in_user(anas_desktop: Desktop) -> None:
    for name in ("desktop-viewer", "desktop-viewer-vv"):
        response = Client().get(reverse(name, args=[anas_desktop.pk]))
        assert response.status_code == 302
        assert "login" in response["Location"]
    assert Client().get(reverse("desktop-viewer", args=[999999])).status_code == 302


def test_viewer_page_of_a_missing_desktop_is_404(ana: Any) -> None:
    assert client_for(ana).get(reverse("desktop-viewer", args=[999999])).status_code == 404


def test_reconnect_endpoint_issues_a_new_token_to_the_owner_only(
    ana: Any, ben: Any, anas_desktop: Desktop
) -> None:
    url = reverse("desktop-viewer-token", args=[anas_desktop.pk])
    assert client_for(ana).get(url).status_code == 405
    first = client_for(ana).post(url).json()
    second = client_for(ana).post(url).json()
    assert first["path"] != second["path"]
    assert "password" not in first and PASSWORD not in str(first)
    refused = client_for(ben).post(url)
    assert refused.status_code == 404
    assert refused.json() == {"message": "No such desktop.", "extra": {}}
    assert PASSWORD not in refused.content.decode()


def test_reconnect_endpoint_checks_csrf(ana: Any, anas_desktop: Desktop) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(ana)
    response = client.post(reverse("desktop-viewer-token", args=[anas_desktop.pk]))
    assert response.status_code == 403
    assert not ViewerToken.objects.exists()


# --- the .vv file --------------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Any) -> tls.PkiPaths:
    monkeypatch.setattr(tls, "RSA_KEY_SIZE", 2048)
    settings.ISARD_PKI_DIR = tmp_path / "pki"
    paths = tls.pki_paths()
    tls.host_certificate_ensure(paths=paths, names=tls.HostNames(dns=("vdi.school.example",)))
    return paths


@pytest.fixture
def spice_passwords(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def record(uri: str, name: str, **kwargs: Any) -> None:
        calls.append({"uri": uri, "name": name, **kwargs})

    monkeypatch.setattr(libvirt_driver, "set_graphics_password", record)
    return calls


def parse_vv(content: str) -> dict[str, str]:
    lines = content.splitlines()
    assert lines[0] == "[virt-viewer]"
    return dict(line.split("=", 1) for line in lines[1:] if line and not line.startswith("#"))


def test_vv_file_opens_spice_over_tls_only_with_a_fresh_expiring_password(
    ana: Any,
    anas_desktop: Desktop,
    pki: tls.PkiPaths,
    vnc_port: list[Any],
    spice_passwords: list[dict[str, Any]],
) -> None:
    vv = viewer_vv_build(actor=ana, desktop=anas_desktop)
    fields = parse_vv(vv.content)
    assert fields["type"] == "spice"
    assert fields["host"] == "127.0.0.1" and fields["tls-port"] == "5908"
    assert "port" not in fields
    assert fields["secure-channels"] == "all"
    assert fields["enable-usbredir"] == "1" and fields["delete-this-file"] == "1"
    assert fields["host-subject"] == "O=isard,CN=vdi.school.example"
    ca = fields["ca"].replace("\\n", "\n")
    assert ca == pki.ca_cert.read_text()
    # The SPICE password is new, set on the running guest with the file's expiry.
    [call] = spice_passwords
    assert call["graphics_type"] == "spice" and call["name"] == anas_desktop.domain_name
    assert fields["password"] == call["password"] != PASSWORD
    assert call["valid_until"] == pytest.approx(vv.expires_at.timestamp())
    assert timedelta(0) < vv.expires_at - timezone.now() <= timedelta(minutes=10)
    audit = ViewerToken.objects.get(protocol=ViewerProtocol.SPICE_TLS)
    assert audit.user == ana and audit.used_at is not None


def test_vv_file_of_another_students_desktop_is_refused(
    ben: Any, anas_desktop: Desktop, pki: tls.PkiPaths, spice_passwords: list[Any]
) -> None:
    response = client_for(ben).get(reverse("desktop-viewer-vv", args=[anas_desktop.pk]))
    assert response.status_code == 404
    assert spice_passwords == []


def test_vv_download_is_an_uncached_attachment(
    ana: Any,
    anas_desktop: Desktop,
    pki: tls.PkiPaths,
    vnc_port: list[Any],
    spice_passwords: list[Any],
) -> None:
    response = client_for(ana).get(reverse("desktop-viewer-vv", args=[anas_desktop.pk]))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/x-virt-viewer"
    assert response["Content-Disposition"] == 'attachment; filename="ana-s-desktop.vv"'
    assert "no-store" in response["Cache-Control"]


def test_vv_file_explains_when_the_hypervisor_has_no_spice_tls(
    ana: Any,
    anas_desktop: Desktop,
    pki: tls.PkiPaths,
    monkeypatch: pytest.MonkeyPatch,
    spice_passwords: list[Any],
) -> None:
    monkeypatch.setattr(
        libvirt_driver,
        "graphics_ports",
        lambda uri, name: libvirt_driver.GraphicsPorts(5900, None, 5901, "127.0.0.1"),
    )
    with pytest.raises(ViewerUnavailableError, match="isard_certs --install-libvirt"):
        viewer_vv_build(actor=ana, desktop=anas_desktop)
    assert spice_passwords == []


def test_vv_file_sends_every_channel_through_the_gateway_with_its_own_credential(
    ana: Any,
    ben: Any,
    anas_desktop: Desktop,
    pki: tls.PkiPaths,
    vnc_port: list[Any],
    spice_passwords: list[Any],
    settings: Any,
) -> None:
    settings.ISARD_TLS_PORT = 8443
    settings.ISARD_PUBLIC_HOST = ""
    bens_desktop = running_desktop(ben, graphics_password="B3n-s3cr")
    vv = viewer_vv_build(actor=ana, desktop=anas_desktop, public_host="vdi.school.example")
    fields = parse_vv(vv.content)
    proxy = urlsplit(fields["proxy"])
    # One public port: the gateway takes its CONNECTs on the HTTPS port by default.
    assert (proxy.scheme, proxy.hostname, proxy.port) == ("http", "vdi.school.example", 8443)
    # The display's own address stays: remote-viewer asks the gateway to CONNECT there.
    assert fields["host"] == "127.0.0.1" and fields["tls-port"] == "5908"
    credential = GatewayCredential.objects.get()
    assert credential.public_id == proxy.username
    assert credential.key_hash == hash_token(proxy.password or "") != proxy.password
    assert credential.user == ana and credential.desktop == anas_desktop
    assert credential.expires_at > vv.expires_at and not credential.revoked
    # No graphics password of any desktop, Ana's or Ben's, is in the file.
    assert PASSWORD not in vv.content and bens_desktop.graphics_password not in vv.content


def test_vv_file_names_the_public_host_setting_and_no_proxy_when_the_gateway_is_off(
    ana: Any,
    anas_desktop: Desktop,
    pki: tls.PkiPaths,
    vnc_port: list[Any],
    spice_passwords: list[Any],
    settings: Any,
) -> None:
    settings.ISARD_TLS_PORT = 8443
    settings.ISARD_PUBLIC_HOST = "vdi.school.example"
    settings.ISARD_PUBLIC_PORT = 443  # the school's firewall forwards 443 to 8443
    response = client_for(ana).get(reverse("desktop-viewer-vv", args=[anas_desktop.pk]))
    proxy = urlsplit(parse_vv(response.content.decode())["proxy"])
    assert (proxy.hostname, proxy.port) == ("vdi.school.example", 443)
    settings.ISARD_PUBLIC_HOST = ""
    settings.ISARD_PUBLIC_PORT = 0
    response = client_for(ana).get(
        reverse("desktop-viewer-vv", args=[anas_desktop.pk]), HTTP_HOST="localhost:8443"
    )
    proxy = urlsplit(parse_vv(response.content.decode())["proxy"])
    assert (proxy.hostname, proxy.port) == ("localhost", 8443)
    # Not shared, a port of its own (behind a proxy that ends TLS itself).
    settings.ISARD_GATEWAY_SHARED = False
    settings.ISARD_GATEWAY_PORT = 8445
    vv = viewer_vv_build(actor=ana, desktop=anas_desktop)
    assert urlsplit(parse_vv(vv.content)["proxy"]).port == 8445
    settings.ISARD_GATEWAY_PORT = 0
    vv = viewer_vv_build(actor=ana, desktop=anas_desktop)
    assert "proxy" not in parse_vv(vv.content)
    assert GatewayCredential.objects.count() == 3


# --- refusals are logged and noted in the desktop's history ----------------------------------


def _reuse(ana: Any, ben: Any, desktop: Desktop) -> tuple[str, Any, dict[str, Any]]:
    token = viewer_token_issue(actor=ana, desktop=desktop).token
    viewer_token_consume(token=token, user=ana)
    return token, ana, {}


def _another_user(ana: Any, ben: Any, desktop: Desktop) -> tuple[str, Any, dict[str, Any]]:
    return viewer_token_issue(actor=ana, desktop=desktop).token, ben, {}


def _expired(ana: Any, ben: Any, desktop: Desktop) -> tuple[str, Any, dict[str, Any]]:
    access = viewer_token_issue(actor=ana, desktop=desktop)
    return access.token, ana, {"now": access.expires_at + timedelta(seconds=1)}


def _stopped(ana: Any, ben: Any, desktop: Desktop) -> tuple[str, Any, dict[str, Any]]:
    token = viewer_token_issue(actor=ana, desktop=desktop).token
    Desktop.objects.filter(pk=desktop.pk).update(status=DesktopStatus.STOPPED)
    return token, ana, {}


@pytest.mark.parametrize(
    ("case", "reason", "who"),
    [
        (_another_user, "other-user", "ben"),
        (_expired, "expired", "ana"),
        (_reuse, "used", "ana"),
        (_stopped, "not-running", "ana"),
    ],
)
def test_every_refused_token_is_logged_and_noted_on_the_desktop(
    ana: Any,
    ben: Any,
    anas_desktop: Desktop,
    vnc_port: list[Any],
    caplog: pytest.LogCaptureFixture,
    case: Any,
    reason: str,
    who: str,
) -> None:
    token, user, options = case(ana, ben, anas_desktop)
    with (
        caplog.at_level(logging.WARNING, logger="desktops.viewer.checks"),
        pytest.raises((ViewerRefusedError, ViewerUnavailableError)) as refused,
    ):
        viewer_token_consume(token=token, user=user, client="192.0.2.7:4000", **options)
    assert refused.value.extra["reason"] == reason
    [record] = [r for r in caplog.records if r.name == "desktops.viewer.checks"]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert f"viewer refused ({reason}): user={who} desktop={anas_desktop.pk}" in message
    assert "client=192.0.2.7:4000" in message and token not in message
    event = DesktopEvent.objects.filter(desktop=anas_desktop, reason__startswith="viewer refused")
    assert [e.reason for e in event] == [f"viewer refused to {who} ({reason}) from 192.0.2.7:4000"]


# --- the hop to the display: TLS whenever it leaves this machine ------------------------------


@pytest.mark.parametrize(
    ("host", "mode", "required"),
    [
        ("127.0.0.1", "auto", False),
        ("127.0.1.1", "auto", False),
        ("::1", "auto", False),
        ("localhost", "auto", False),
        ("10.0.0.5", "auto", True),
        ("hv2.school.example", "auto", True),
        ("127.0.0.1", "required", True),
    ],
)
def test_the_proxy_needs_tls_to_any_display_beyond_this_machine(
    host: str, mode: str, required: bool, settings: Any
) -> None:
    settings.ISARD_VIEWER_TLS = mode
    assert viewer_tls_required(host=host) is required


def test_a_mistyped_tls_mode_is_a_configuration_error(settings: Any) -> None:
    from django.core.exceptions import ImproperlyConfigured

    from isard.checks import check_viewer_tls_setting

    settings.ISARD_VIEWER_TLS = "yes"
    with pytest.raises(ImproperlyConfigured, match="ISARD_VIEWER_TLS"):
        viewer_tls_required(host="10.0.0.5")
    assert [error.id for error in check_viewer_tls_setting()] == ["isard.E050"]


def test_the_target_carries_the_password_and_tls_need_for_the_proxy_only(
    ana: Any, anas_desktop: Desktop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        libvirt_driver,
        "graphics_ports",
        lambda uri, name: libvirt_driver.GraphicsPorts(None, 5901, 5900, "10.1.2.3"),
    )
    access = viewer_token_issue(actor=ana, desktop=anas_desktop)
    target = viewer_token_consume(token=access.token, user=ana)
    assert (target.host, target.port, target.require_tls) == ("10.1.2.3", 5900, True)
    assert target.password == PASSWORD and PASSWORD not in repr(target)


# --- purging spent and expired tokens ---------------------------------------------------------


def test_the_purge_drops_tokens_that_can_open_nothing_once_past_their_retention(
    ana: Any, anas_desktop: Desktop, settings: Any
) -> None:
    settings.ISARD_VIEWER_TOKEN_RETENTION_SECONDS = 3600
    now = timezone.now()

    def token(created_ago: timedelta, used: bool) -> ViewerToken:
        created = now - created_ago
        return ViewerToken.objects.create(
            key_hash=hash_token(f"{created_ago}-{used}"),
            user=ana,
            desktop=anas_desktop,
            protocol=ViewerProtocol.BROWSER_VNC,
            created_at=created,
            expires_at=created + timedelta(seconds=60),
            used_at=created + timedelta(seconds=1) if used else None,
        )

    fresh = token(timedelta(seconds=10), used=False)
    recently_used = token(timedelta(minutes=30), used=True)
    recently_expired = token(timedelta(minutes=30), used=False)
    token(timedelta(hours=2), used=True)
    token(timedelta(hours=2), used=False)
    token(timedelta(days=3), used=False)

    from desktops.tasks import purge_viewer_tokens

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(timezone, "now", lambda: now)
        assert purge_viewer_tokens() == 3
        assert purge_viewer_tokens() == 0
    assert set(ViewerToken.objects.all()) == {fresh, recently_used, recently_expired}


def test_the_purge_runs_on_the_beat_schedule() -> None:
    from isard.celery import app

    app.loader.import_default_modules()
    entries = {entry["task"] for entry in app.conf.beat_schedule.values()}
    assert "desktops.tasks.purge_viewer_tokens" in entries
    assert "desktops.tasks.purge_viewer_tokens" in app.tasks


@pytest.mark.parametrize(
    ("uri", "listen"),
    [
        ("qemu:///system", "127.0.0.1"),
        ("qemu+unix:///session?socket=/run/user/1000/libvirt/libvirt-sock", "127.0.0.1"),
        ("qemu+ssh://localhost/system", "127.0.0.1"),
        ("qemu+tls://hv2.school.example/system", "0.0.0.0"),
        ("qemu+ssh://root@10.0.0.9/system", "0.0.0.0"),
    ],
)
def test_displays_listen_on_loopback_here_and_for_the_proxy_on_remote_hosts(
    uri: str, listen: str
) -> None:
    from desktops.viewer.services import graphics_listen_address

    hypervisor = HypervisorFactory.build(uri=uri)
    assert graphics_listen_address(hypervisor) == listen
    # The proxy then connects to the host of the URI, where TLS is required.
    host = graphics_host(hypervisor=hypervisor, listen=listen)
    assert viewer_tls_required(host=host) is (listen == "0.0.0.0")


def test_the_domain_of_a_desktop_on_a_remote_host_listens_where_the_proxy_reaches_it(
    run: Any, test_hypervisor: Any, base_template: Any, ana: Any
) -> None:

    desktop = run(desktop_create, actor=ana, template=base_template, name="Remote")
    desktop.refresh_from_db()
    remote = HypervisorFactory.build(uri="qemu+tls://hv2.school.example/system")
    assert desktop_domain_spec(desktop, remote).graphics_listen == "0.0.0.0"
    assert desktop_domain_spec(desktop, test_hypervisor).graphics_listen == "127.0.0.1"
