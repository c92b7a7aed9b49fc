"""The files a native client opens a desktop with: `.vv` (SPICE over TLS) and `.rdp`.

`viewer_vv_build` sets a fresh SPICE password on the running guest that QEMU accepts for
new connections only until its expiry (`ISARD_SPICE_TICKET_SECONDS`), and writes it with
the platform CA and the host's subject into the file.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from accounts.models import User
from desktops.models import Desktop, ViewerProtocol, ViewerToken
from desktops.viewer.checks import (
    ViewerUnavailableError,
    viewer_check,
    viewer_event_record,
    viewer_refuse,
)
from desktops.viewer.gateway_access import (
    gateway_credential_issue,
    gateway_port,
    gateway_proxy_url,
)
from desktops.viewer.services import graphics_host, graphics_ports, hash_token
from hypervisors import tls
from hypervisors.drivers import libvirt_driver
from isard.core.errors import (
    InfrastructureError,
)

DEFAULT_SPICE_TICKET_SECONDS = 120


@dataclass(frozen=True)
class VvFile:
    filename: str
    content: str
    expires_at: datetime


@dataclass(frozen=True)
class RdpFile:
    filename: str
    content: str
    address: str


def spice_ticket_lifetime() -> timedelta:
    seconds = getattr(settings, "ISARD_SPICE_TICKET_SECONDS", DEFAULT_SPICE_TICKET_SECONDS)
    return timedelta(seconds=seconds)


def _keyfile_value(value: str) -> str:
    """Escape a value for a GLib key file (what remote-viewer reads)."""
    escaped = (
        value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    )
    return "\\s" + escaped[1:] if escaped.startswith(" ") else escaped


def _vv_filename(desktop: Desktop) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in desktop.name).strip("-")
    return f"{safe or 'desktop'}.vv"


def viewer_vv_build(
    *,
    actor: User,
    desktop: Desktop,
    pki: tls.PkiPaths | None = None,
    now: datetime | None = None,
    public_host: str = "localhost",
) -> VvFile:
    """A `.vv` file that opens the owner's running desktop in remote-viewer over TLS only.

    Sets a fresh SPICE password on the guest that QEMU accepts for new connections until
    the file's expiry; a viewer already connected stays connected. USB redirection is on:
    the guest has as many redirection channels as its hardware profile says.

    With the SPICE gateway on (`gateway_port`), the file's `proxy=` line sends every
    channel through it with a fresh gateway credential, so a student's own device needs
    to reach only the platform (`ISARD_PUBLIC_HOST`, else `public_host`: the name the file
    was downloaded from), not the hypervisor.
    """
    hypervisor = viewer_check(actor=actor, desktop=desktop, protocol=ViewerProtocol.SPICE_TLS)
    pki = pki or tls.pki_paths()
    ports = graphics_ports(desktop=desktop, hypervisor=hypervisor)
    if ports.spice_tls_port is None:
        raise viewer_refuse(
            "no-tls",
            f"SPICE over TLS is not enabled on the hypervisor {hypervisor.name}: an "
            "administrator runs `manage.py isard_certs --install-libvirt` there, then the "
            f"desktop “{desktop.name}” is started again.",
            user=actor,
            desktop=desktop,
            error=ViewerUnavailableError,
        )
    host_certificate = tls.hypervisor_certificate(
        paths=pki, hypervisor_name=hypervisor.name
    ) or tls.load_certificate(pki.host_cert)
    if host_certificate is None:
        raise ViewerUnavailableError(
            "The platform has no host certificate yet: run `manage.py isard_certs`.",
            extra={"reason": "no-tls"},
        )
    ca_bundle = tls.ca_bundle_pem(paths=pki)
    now = now or timezone.now()
    expires_at = now + spice_ticket_lifetime()
    ticket = secrets.token_urlsafe(18)
    try:
        libvirt_driver.set_graphics_password(
            hypervisor.uri,
            desktop.domain_name,
            graphics_type="spice",
            password=ticket,
            valid_until=expires_at.timestamp(),
        )
    except libvirt_driver.DriverError as error:
        raise InfrastructureError(
            f"Could not prepare the SPICE connection of “{desktop.name}”: {error}"
        ) from error
    # An audit row of who got a SPICE password and until when (spent as it is issued).
    ViewerToken.objects.create(
        key_hash=hash_token(ticket),
        user=actor,
        desktop=desktop,
        protocol=ViewerProtocol.SPICE_TLS,
        created_at=now,
        expires_at=expires_at,
        used_at=now,
    )
    viewer_event_record(desktop, "SPICE viewer file (.vv) issued", actor)
    host = graphics_host(hypervisor=hypervisor, listen=ports.listen)
    proxy_lines = []
    if gateway_port():
        credential = gateway_credential_issue(actor=actor, desktop=desktop, now=now)
        proxy = gateway_proxy_url(credential=credential, public_host=public_host)
        proxy_lines.append(f"proxy={proxy}")
    lines = [
        "[virt-viewer]",
        "type=spice",
        f"host={host}",
        f"tls-port={ports.spice_tls_port}",
        f"password={ticket}",
        f"ca={_keyfile_value(ca_bundle)}",
        f"host-subject={tls.host_subject(host_certificate)}",
        "secure-channels=all",
        f"title={_keyfile_value(desktop.name)} (isard)",
        "enable-usbredir=1",
        *proxy_lines,
        "delete-this-file=1",
        "toggle-fullscreen=shift+f11",
        "release-cursor=shift+f12",
        "secure-attention=ctrl+alt+end",
        f"# The password works for new connections until {expires_at:%Y-%m-%d %H:%M:%S} UTC.",
        "",
    ]
    return VvFile(filename=_vv_filename(desktop), content="\n".join(lines), expires_at=expires_at)


def viewer_rdp_build(*, actor: User, desktop: Desktop) -> RdpFile:
    """An `.rdp` file for the owner's running desktop, at the address its guest reports.

    Windows guests with the QEMU guest agent report their addresses (every domain has the
    agent's channel); guests on a libvirt network with DHCP have a lease, and guests the
    host has talked to an entry in its ARP table. The file connects straight to the guest, so the
    client must reach the guests' network, or go through the RD Gateway named in
    `ISARD_RDP_GATEWAY`. The guest's own login applies: the file carries no password.
    """
    hypervisor = viewer_check(actor=actor, desktop=desktop, protocol=None)
    try:
        addresses = libvirt_driver.domain_ip_addresses(hypervisor.uri, desktop.domain_name)
    except libvirt_driver.DriverError as error:
        raise InfrastructureError(
            f"Could not ask {hypervisor.name} for the address of “{desktop.name}”: {error}"
        ) from error
    if not addresses:
        raise viewer_refuse(
            "no-address",
            f"The desktop “{desktop.name}” has not reported an IP address: install the QEMU "
            "guest agent in the guest (or in its template), or wait until it has finished "
            "booting and try again.",
            user=actor,
            desktop=desktop,
            error=ViewerUnavailableError,
        )
    chosen = addresses[0]  # IPv4 first, from the best source (see domain_ip_addresses)
    host = f"[{chosen.address}]" if chosen.version == 6 else chosen.address
    lines = [
        f"full address:s:{host}",
        "screen mode id:i:2",
        "use multimon:i:0",
        "session bpp:i:32",
        "prompt for credentials:i:1",
        "authentication level:i:2",
        "autoreconnection enabled:i:1",
        "audiomode:i:0",
        "redirectclipboard:i:1",
        "redirectprinters:i:0",
        "redirectsmartcards:i:0",
        "drivestoredirect:s:",
    ]
    gateway = getattr(settings, "ISARD_RDP_GATEWAY", "")
    if gateway:
        lines += [
            f"gatewayhostname:s:{gateway}",
            "gatewayusagemethod:i:1",
            "gatewayprofileusagemethod:i:1",
            "gatewaycredentialssource:i:0",
        ]
    viewer_event_record(desktop, f"RDP file issued for {chosen.address} ({chosen.source})", actor)
    filename = _vv_filename(desktop).removesuffix(".vv") + ".rdp"
    # RDP clients on Windows expect CRLF line ends.
    return RdpFile(filename=filename, content="\r\n".join(lines) + "\r\n", address=chosen.address)
