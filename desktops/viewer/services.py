"""Opening a desktop's screen: viewer tokens for the browser, `.vv` files for remote-viewer.

Browser: the owner's viewer page gets a single-use token that lives a minute
(`ISARD_VIEWER_TOKEN_SECONDS`). Anyone else who may act on the desktop (the course's
teacher, the school's manager, an administrator: `can_act_on_desktop`) gets a view-only
token instead: the proxy joins the display as a shared client, so the owner's session
stays, and drops every key, pointer and clipboard event from that side
(`desktops.viewer.rfb.ViewOnlyFilter`); each such look is recorded in the desktop's events
with who looked. noVNC opens `/ws/viewer/<token>/`; the proxy consumes the
token (`viewer_token_consume`) and connects only to the VNC port of the desktop the token
names, on the hypervisor it runs on at that moment (so a reconnect follows a desktop that
moved). The proxy signs in to that display itself with the desktop's VNC password, over
TLS whenever the hop leaves this machine (`viewer_tls_required`), so the password never
reaches a browser (`desktops.viewer.rfb`).

Native client: `viewer_vv_build` sets a fresh SPICE password on the running guest that
QEMU accepts for new connections only until its expiry (`ISARD_SPICE_TICKET_SECONDS`),
and writes it with the platform CA and the host's subject into a `.vv` file.

Every refusal raises an `ApplicationError` subclass with a message for the person and
`extra["reason"]` for code, and is logged with who, which desktop and from where.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db.models import Q
from django.utils import timezone

from accounts.models import User
from desktops.choices import DesktopStatus
from desktops.models import Desktop, DesktopEvent, ViewerProtocol, ViewerToken
from desktops.permissions import can_act_on_desktop
from hypervisors import tls
from hypervisors.drivers import libvirt_driver
from hypervisors.models import Hypervisor
from isard.core.errors import (
    ConflictError,
    InfrastructureError,
    NotFoundError,
    PermissionDeniedError,
)

logger = logging.getLogger(__name__)

DEFAULT_TOKEN_SECONDS = 60
DEFAULT_SPICE_TICKET_SECONDS = 120
DEFAULT_TOKEN_RETENTION_SECONDS = 3600
#: `ISARD_VIEWER_TLS`: "auto" encrypts the proxy's hop whenever it leaves this machine (and
#: uses TLS on loopback too when the display offers it); "required" on every hop.
VIEWER_TLS_MODES = ("auto", "required")
WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::", "[::]"})


class ViewerRefusedError(PermissionDeniedError):
    """A viewer was refused to this person; `extra["reason"]` says why, for code and logs."""


class ViewerUnavailableError(ConflictError):
    """The desktop cannot be viewed now (stopped, no such display, TLS not set up)."""


@dataclass(frozen=True)
class BrowserViewerAccess:
    """What the owner's viewer page needs: never give it to anyone else."""

    token: str
    expires_at: datetime
    websocket_path: str
    desktop_id: int
    desktop_name: str
    view_only: bool = False


@dataclass(frozen=True)
class ViewerTarget:
    """Where the proxy may connect: the graphics port of one desktop, nothing else, and how
    it signs in there (the password stays on the server)."""

    host: str
    port: int
    desktop_id: int
    domain_name: str
    user_id: int
    password: str = field(default="", repr=False)
    require_tls: bool = True
    #: Drop the browser's input, and join as a shared client (never exclusive).
    view_only: bool = False


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


def token_lifetime() -> timedelta:
    return timedelta(seconds=getattr(settings, "ISARD_VIEWER_TOKEN_SECONDS", DEFAULT_TOKEN_SECONDS))


def spice_ticket_lifetime() -> timedelta:
    seconds = getattr(settings, "ISARD_SPICE_TICKET_SECONDS", DEFAULT_SPICE_TICKET_SECONDS)
    return timedelta(seconds=seconds)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def websocket_path(token: str) -> str:
    return f"/ws/viewer/{token}/"


def _refuse(
    reason: str,
    message: str,
    *,
    user: Any,
    desktop: Desktop | None = None,
    client: str = "",
    error: type[ViewerRefusedError] | type[ViewerUnavailableError] = ViewerRefusedError,
) -> ViewerRefusedError | ViewerUnavailableError:
    """Log a refusal (never the token itself), note it in the desktop's history, and return
    the error to raise."""
    username = getattr(user, "username", None) or "anonymous"
    logger.warning(
        "viewer refused (%s): user=%s desktop=%s client=%s: %s",
        reason,
        username,
        desktop.pk if desktop is not None else "-",
        client or "-",
        message,
    )
    if desktop is not None:
        DesktopEvent.objects.create(
            desktop=desktop,
            from_status=desktop.status,
            to_status=desktop.status,
            reason=f"viewer refused to {username} ({reason}) from {client or 'an unknown address'}",
            actor=user if isinstance(user, User) else None,
        )
    return error(message, extra={"reason": reason})


def _check_view_only_allowed(*, actor: User, desktop: Desktop, client: str = "") -> None:
    """A view-only look is for someone who may act on the desktop and is not its owner."""
    if desktop.owner_id == actor.pk:
        raise _refuse(
            "own-desktop",
            f"“{desktop.name}” is your own desktop: open it with the ordinary viewer.",
            user=actor,
            desktop=desktop,
            client=client,
        )


def _not_found(*, actor: User, desktop: Desktop, client: str) -> NotFoundError:
    """Someone who may not see the desktop: as if it did not exist (the same answer as a
    free id), and nothing written in its history; the log keeps the probe."""
    logger.warning(
        "viewer refused (not-visible): user=%s desktop=%s client=%s",
        actor.get_username(),
        desktop.pk,
        client or "-",
    )
    return NotFoundError("No such desktop.")


def _check_viewable(
    *,
    actor: User,
    desktop: Desktop,
    protocol: ViewerProtocol | None,
    client: str = "",
    view_only: bool = False,
) -> Hypervisor:
    """The checks every viewer path shares: the owner only (or, `view_only`, someone else
    who may act on it), a running desktop, its display (`protocol` None: a path that
    needs no display of the hypervisor's, such as RDP). Someone who may not see the
    desktop is told it does not exist."""
    if desktop.owner_id != actor.pk and not can_act_on_desktop(actor, desktop):
        raise _not_found(actor=actor, desktop=desktop, client=client)
    if view_only:
        _check_view_only_allowed(actor=actor, desktop=desktop, client=client)
    elif desktop.owner_id != actor.pk:
        raise _refuse(
            "not-owner",
            f"Only the owner of the desktop “{desktop.name}” may open its viewer.",
            user=actor,
            desktop=desktop,
            client=client,
        )
    elif not can_act_on_desktop(actor, desktop):
        # The owner's own desktop, in a deployment the teacher has hidden for now.
        raise _refuse(
            "hidden",
            f"Your teacher has hidden “{desktop.name}” for now.",
            user=actor,
            desktop=desktop,
            client=client,
        )
    if desktop.status != DesktopStatus.STARTED or desktop.hypervisor is None:
        label = DesktopStatus(desktop.status).label.lower()
        raise _refuse(
            "not-running",
            f"The desktop “{desktop.name}” is {label}: start it, then open its viewer.",
            user=actor,
            desktop=desktop,
            client=client,
            error=ViewerUnavailableError,
        )
    if protocol is None:
        return desktop.hypervisor
    hardware = desktop.hardware
    has_display = (
        hardware.graphics_vnc if protocol == ViewerProtocol.BROWSER_VNC else hardware.graphics_spice
    )
    if not has_display:
        kind = "VNC" if protocol == ViewerProtocol.BROWSER_VNC else "SPICE"
        raise _refuse(
            "no-display",
            f"The desktop “{desktop.name}” has no {kind} display in its hardware profile.",
            user=actor,
            desktop=desktop,
            client=client,
            error=ViewerUnavailableError,
        )
    return desktop.hypervisor


def _record(desktop: Desktop, reason: str, actor: User) -> None:
    DesktopEvent.objects.create(
        desktop=desktop,
        from_status=desktop.status,
        to_status=desktop.status,
        reason=reason,
        actor=actor,
    )


# --- browser viewer ---------------------------------------------------------------------------


def viewer_token_issue(
    *, actor: User, desktop: Desktop, view_only: bool = False, now: datetime | None = None
) -> BrowserViewerAccess:
    """Give the desktop's owner a single-use token for the browser viewer; with
    `view_only`, give one to someone else who may act on the desktop (its course's
    teacher) to look at its screen without touching it or disconnecting the owner."""
    _check_viewable(
        actor=actor, desktop=desktop, protocol=ViewerProtocol.BROWSER_VNC, view_only=view_only
    )
    now = now or timezone.now()
    token = secrets.token_urlsafe(32)
    expires_at = now + token_lifetime()
    ViewerToken.objects.create(
        key_hash=hash_token(token),
        user=actor,
        desktop=desktop,
        protocol=ViewerProtocol.BROWSER_VNC,
        view_only=view_only,
        created_at=now,
        expires_at=expires_at,
    )
    # Tokens are worthless once expired; dropping this user's old ones keeps the table small.
    ViewerToken.objects.filter(user=actor, expires_at__lt=now - timedelta(days=1)).delete()
    return BrowserViewerAccess(
        token=token,
        expires_at=expires_at,
        websocket_path=websocket_path(token),
        desktop_id=desktop.pk,
        desktop_name=desktop.name,
        view_only=view_only,
    )


def viewer_token_consume(
    *,
    token: str,
    user: Any,
    protocol: ViewerProtocol = ViewerProtocol.BROWSER_VNC,
    client: str = "",
    now: datetime | None = None,
) -> ViewerTarget:
    """Spend a viewer token and return the one graphics port it opens.

    The token must have been issued to `user` (the websocket's signed-in user), for this
    protocol, not be expired and never used. It is spent before the desktop is checked, so
    a refused token cannot be tried again. Talks to libvirt: call it outside a transaction.
    """
    now = now or timezone.now()
    if user is None or not user.is_authenticated:
        raise _refuse("anonymous", "Sign in to open a desktop viewer.", user=None, client=client)
    record = (
        ViewerToken.objects.select_related("desktop__hypervisor", "desktop__hardware")
        .filter(key_hash=hash_token(token))
        .first()
    )
    if record is None:
        raise _refuse(
            "unknown-token",
            "This viewer link is not valid: open the viewer again from your desktops.",
            user=user,
            client=client,
        )
    desktop = record.desktop
    if record.user_id != user.pk:
        raise _refuse(
            "other-user",
            "This viewer link was issued to someone else.",
            user=user,
            desktop=desktop,
            client=client,
        )
    if record.protocol != protocol:
        raise _refuse(
            "wrong-protocol",
            "This viewer link is for another kind of viewer.",
            user=user,
            desktop=desktop,
            client=client,
        )
    if record.used_at is not None:
        raise _refuse(
            "used",
            "This viewer link was already used: open the viewer again to get a new one.",
            user=user,
            desktop=desktop,
            client=client,
        )
    if record.expires_at <= now:
        raise _refuse(
            "expired",
            "This viewer link expired: open the viewer again to get a new one.",
            user=user,
            desktop=desktop,
            client=client,
        )
    spent = ViewerToken.objects.filter(pk=record.pk, used_at__isnull=True).update(
        used_at=now, used_from=client[:100]
    )
    if spent == 0:  # another connection spent it between our read and this update
        raise _refuse(
            "used",
            "This viewer link was already used: open the viewer again to get a new one.",
            user=user,
            desktop=desktop,
            client=client,
        )
    desktop.refresh_from_db()
    # Checked again at connection time: a teacher who left the course since cannot look.
    hypervisor = _check_viewable(
        actor=user, desktop=desktop, protocol=protocol, client=client, view_only=record.view_only
    )
    target = viewer_target(
        desktop=desktop, hypervisor=hypervisor, user=user, view_only=record.view_only
    )
    where = client or "an unknown address"
    if record.view_only:
        looker = user.get_username()
        _record(desktop, f"view-only look at the screen by {looker} from {where}", user)
    else:
        _record(desktop, f"browser viewer opened from {where}", user)
    return target


def viewer_tokens_purge(*, now: datetime | None = None) -> int:
    """Delete viewer tokens that can open nothing any more (expired or spent) once they are
    older than `ISARD_VIEWER_TOKEN_RETENTION_SECONDS`; until then a reused token is told
    "already used" rather than "not valid". Who opened what stays in the desktop's events.
    """
    now = now or timezone.now()
    retention = getattr(
        settings, "ISARD_VIEWER_TOKEN_RETENTION_SECONDS", DEFAULT_TOKEN_RETENTION_SECONDS
    )
    cutoff = now - timedelta(seconds=retention)
    deleted, _ = ViewerToken.objects.filter(
        Q(expires_at__lt=cutoff) | Q(used_at__lt=cutoff)
    ).delete()
    if deleted:
        logger.info("purged %d viewer tokens", deleted)
    return deleted


def is_loopback(host: str) -> bool:
    """Whether connecting to `host` stays on this machine."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def viewer_tls_required(*, host: str) -> bool:
    """Must the proxy's hop to a display at `host` be encrypted? Always when it leaves this
    machine; on loopback too with `ISARD_VIEWER_TLS = "required"`."""
    mode = getattr(settings, "ISARD_VIEWER_TLS", "auto")
    if mode not in VIEWER_TLS_MODES:
        raise ImproperlyConfigured(
            f"ISARD_VIEWER_TLS is {mode!r}; it must be one of {', '.join(VIEWER_TLS_MODES)}"
        )
    return mode == "required" or not is_loopback(host)


def graphics_listen_address(hypervisor: Hypervisor) -> str:
    """Where a guest's displays listen on its hypervisor (the domain XML's listen address).

    Loopback when the hypervisor is this machine: the proxy is here too. Every address of
    a remote hypervisor, whose displays the proxy reaches across the network, and only
    over TLS (`viewer_tls_required`): such a host gets its certificates from
    `isard_certs --hypervisor NAME --hostname <the host of its libvirt URI>` first.
    """
    host = urlsplit(hypervisor.uri).hostname
    return "127.0.0.1" if not host or is_loopback(host) else "0.0.0.0"


def graphics_host(*, hypervisor: Hypervisor, listen: str | None) -> str:
    """The address to reach a guest's display: its listen address, or its host's name."""
    if listen and listen not in WILDCARD_ADDRESSES:
        return listen
    return urlsplit(hypervisor.uri).hostname or "127.0.0.1"


def viewer_target(
    *, desktop: Desktop, hypervisor: Hypervisor, user: User, view_only: bool = False
) -> ViewerTarget:
    """Ask the desktop's hypervisor which VNC port its running guest has."""
    try:
        ports = libvirt_driver.graphics_ports(hypervisor.uri, desktop.domain_name)
    except libvirt_driver.DriverError as error:
        raise InfrastructureError(
            f"Could not find the screen of “{desktop.name}” on {hypervisor.name}: {error}"
        ) from error
    if ports.vnc_port is None:
        raise _refuse(
            "no-display",
            f"The desktop “{desktop.name}” has no VNC display running.",
            user=user,
            desktop=desktop,
            error=ViewerUnavailableError,
        )
    host = graphics_host(hypervisor=hypervisor, listen=ports.listen)
    return ViewerTarget(
        host=host,
        port=ports.vnc_port,
        desktop_id=desktop.pk,
        domain_name=desktop.domain_name,
        user_id=user.pk,
        password=desktop.graphics_password,
        require_tls=viewer_tls_required(host=host),
        view_only=view_only,
    )


# --- SPICE over TLS: the .vv file for remote-viewer ------------------------------------------


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
) -> VvFile:
    """A `.vv` file that opens the owner's running desktop in remote-viewer over TLS only.

    Sets a fresh SPICE password on the guest that QEMU accepts for new connections until
    the file's expiry; a viewer already connected stays connected. USB redirection is on:
    the guest has as many redirection channels as its hardware profile says.
    """
    hypervisor = _check_viewable(actor=actor, desktop=desktop, protocol=ViewerProtocol.SPICE_TLS)
    pki = pki or tls.pki_paths()
    try:
        ports = libvirt_driver.graphics_ports(hypervisor.uri, desktop.domain_name)
    except libvirt_driver.DriverError as error:
        raise InfrastructureError(
            f"Could not find the screen of “{desktop.name}” on {hypervisor.name}: {error}"
        ) from error
    if ports.spice_tls_port is None:
        raise _refuse(
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
    _record(desktop, "SPICE viewer file (.vv) issued", actor)
    host = graphics_host(hypervisor=hypervisor, listen=ports.listen)
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
        "delete-this-file=1",
        "toggle-fullscreen=shift+f11",
        "release-cursor=shift+f12",
        "secure-attention=ctrl+alt+end",
        f"# The password works for new connections until {expires_at:%Y-%m-%d %H:%M:%S} UTC.",
        "",
    ]
    return VvFile(filename=_vv_filename(desktop), content="\n".join(lines), expires_at=expires_at)


# --- RDP: a .rdp file for guests that report an IP address ----------------------------------


def viewer_rdp_build(*, actor: User, desktop: Desktop) -> RdpFile:
    """An `.rdp` file for the owner's running desktop, at the address its guest reports.

    Windows guests with the QEMU guest agent report their addresses (every domain has the
    agent's channel); guests on a libvirt network with DHCP have a lease, and guests the
    host has talked to an entry in its ARP table. The file connects straight to the guest, so the
    client must reach the guests' network, or go through the RD Gateway named in
    `ISARD_RDP_GATEWAY`. The guest's own login applies: the file carries no password.
    """
    hypervisor = _check_viewable(actor=actor, desktop=desktop, protocol=None)
    try:
        addresses = libvirt_driver.domain_ip_addresses(hypervisor.uri, desktop.domain_name)
    except libvirt_driver.DriverError as error:
        raise InfrastructureError(
            f"Could not ask {hypervisor.name} for the address of “{desktop.name}”: {error}"
        ) from error
    if not addresses:
        raise _refuse(
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
    _record(desktop, f"RDP file issued for {chosen.address} ({chosen.source})", actor)
    filename = _vv_filename(desktop).removesuffix(".vv") + ".rdp"
    # RDP clients on Windows expect CRLF line ends.
    return RdpFile(filename=filename, content="\r\n".join(lines) + "\r\n", address=chosen.address)
