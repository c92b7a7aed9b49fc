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
from desktops.models import Desktop, DirectLink, ViewerProtocol, ViewerToken
from desktops.permissions import can_act_on_desktop
from desktops.viewer.checks import (
    ViewerUnavailableError,
    viewer_check,
    viewer_check_display,
    viewer_event_record,
    viewer_refuse,
)
from hypervisors.drivers import libvirt_driver
from hypervisors.models import Hypervisor
from isard.core.errors import (
    InfrastructureError,
)

logger = logging.getLogger(__name__)

DEFAULT_TOKEN_SECONDS = 60
DEFAULT_TOKEN_RETENTION_SECONDS = 3600
#: `ISARD_VIEWER_TLS`: "auto" encrypts the proxy's hop whenever it leaves this machine (and
#: uses TLS on loopback too when the display offers it); "required" on every hop.
VIEWER_TLS_MODES = ("auto", "required")
WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::", "[::]"})


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


def token_lifetime() -> timedelta:
    return timedelta(seconds=getattr(settings, "ISARD_VIEWER_TOKEN_SECONDS", DEFAULT_TOKEN_SECONDS))


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def websocket_path(token: str) -> str:
    return f"/ws/viewer/{token}/"


# --- browser viewer ---------------------------------------------------------------------------


def viewer_token_issue(
    *, actor: User, desktop: Desktop, view_only: bool = False, now: datetime | None = None
) -> BrowserViewerAccess:
    """Give the desktop's owner a single-use token for the browser viewer; with
    `view_only`, give one to someone else who may act on the desktop (its course's
    teacher) to look at its screen without touching it or disconnecting the owner."""
    viewer_check(
        actor=actor, desktop=desktop, protocol=ViewerProtocol.BROWSER_VNC, view_only=view_only
    )
    return _token_create(user=actor, desktop=desktop, view_only=view_only, now=now)


def viewer_token_issue_direct(
    *, link: DirectLink, client: str = "", now: datetime | None = None
) -> BrowserViewerAccess:
    """A single-use token for whoever holds a live direct link (checked by the caller,
    `desktops.viewer.direct_links`, and again when the token is spent): the owner's
    interactive viewer of the link's running desktop."""
    desktop = link.desktop
    viewer_check_display(
        actor=desktop.owner, desktop=desktop, protocol=ViewerProtocol.BROWSER_VNC, client=client
    )
    return _token_create(user=desktop.owner, desktop=desktop, direct_link=link, now=now)


def _token_create(
    *,
    user: User,
    desktop: Desktop,
    view_only: bool = False,
    direct_link: DirectLink | None = None,
    now: datetime | None = None,
) -> BrowserViewerAccess:
    now = now or timezone.now()
    token = secrets.token_urlsafe(32)
    expires_at = now + token_lifetime()
    ViewerToken.objects.create(
        key_hash=hash_token(token),
        user=user,
        desktop=desktop,
        protocol=ViewerProtocol.BROWSER_VNC,
        view_only=view_only,
        direct_link=direct_link,
        created_at=now,
        expires_at=expires_at,
    )
    # Tokens are worthless once expired; dropping this user's old ones keeps the table small.
    ViewerToken.objects.filter(user=user, expires_at__lt=now - timedelta(days=1)).delete()
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
    signed_in = user is not None and user.is_authenticated
    record = (
        ViewerToken.objects.select_related(
            "desktop__hypervisor", "desktop__hardware", "desktop__owner", "direct_link__created_by"
        )
        .filter(key_hash=hash_token(token))
        .first()
    )
    if record is not None and record.direct_link is not None:
        # Whoever opened the link holds this token, signed in or not.
        return _direct_token_consume(
            record=record, link=record.direct_link, protocol=protocol, client=client, now=now
        )
    if not signed_in:
        raise viewer_refuse(
            "anonymous", "Sign in to open a desktop viewer.", user=None, client=client
        )
    if record is None:
        raise viewer_refuse(
            "unknown-token",
            "This viewer link is not valid: open the viewer again from your desktops.",
            user=user,
            client=client,
        )
    desktop = record.desktop
    if record.user_id != user.pk:
        raise viewer_refuse(
            "other-user",
            "This viewer link was issued to someone else.",
            user=user,
            desktop=desktop,
            client=client,
        )
    _spend(record=record, protocol=protocol, user=user, client=client, now=now)
    desktop.refresh_from_db()
    # Checked again at connection time: a teacher who left the course since cannot look.
    hypervisor = viewer_check(
        actor=user, desktop=desktop, protocol=protocol, client=client, view_only=record.view_only
    )
    target = viewer_target(
        desktop=desktop, hypervisor=hypervisor, user=user, view_only=record.view_only
    )
    where = client or "an unknown address"
    if record.view_only:
        looker = user.get_username()
        viewer_event_record(desktop, f"view-only look at the screen by {looker} from {where}", user)
    else:
        viewer_event_record(desktop, f"browser viewer opened from {where}", user)
    return target


def _spend(
    *, record: ViewerToken, protocol: ViewerProtocol, user: Any, client: str, now: datetime
) -> None:
    """Refuse a token for another protocol, used or expired; spend it with one conditional
    update (of two connections racing with the same token, exactly one wins)."""
    desktop = record.desktop
    if record.protocol != protocol:
        raise viewer_refuse(
            "wrong-protocol",
            "This viewer link is for another kind of viewer.",
            user=user,
            desktop=desktop,
            client=client,
        )
    if record.used_at is not None:
        raise viewer_refuse(
            "used",
            "This viewer link was already used: open the viewer again to get a new one.",
            user=user,
            desktop=desktop,
            client=client,
        )
    if record.expires_at <= now:
        raise viewer_refuse(
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
        raise viewer_refuse(
            "used",
            "This viewer link was already used: open the viewer again to get a new one.",
            user=user,
            desktop=desktop,
            client=client,
        )


def _direct_token_consume(
    *,
    record: ViewerToken,
    link: DirectLink,
    protocol: ViewerProtocol,
    client: str,
    now: datetime,
) -> ViewerTarget:
    """A token issued through a direct link: spent like any other, then the link is
    checked again (revoked or expired since, or its maker no longer over the desktop)."""
    owner = record.desktop.owner
    _spend(record=record, protocol=protocol, user=None, client=client, now=now)
    desktop = record.desktop
    desktop.refresh_from_db()
    link.refresh_from_db()
    if not link.is_live(now) or not can_act_on_desktop(link.created_by, desktop):
        raise viewer_refuse(
            "direct-link-closed",
            "This direct link was revoked or expired.",
            user=None,
            desktop=desktop,
            client=client,
        )
    hypervisor = viewer_check_display(
        actor=owner, desktop=desktop, protocol=protocol, client=client
    )
    target = viewer_target(desktop=desktop, hypervisor=hypervisor, user=owner)
    where = client or "an unknown address"
    viewer_event_record(
        desktop, f"browser viewer opened through direct link {link.pk} from {where}", None
    )
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


def graphics_ports(*, desktop: Desktop, hypervisor: Hypervisor) -> libvirt_driver.GraphicsPorts:
    """The ports the running guest's displays listen on now, as its hypervisor says."""
    try:
        return libvirt_driver.graphics_ports(hypervisor.uri, desktop.domain_name)
    except libvirt_driver.DriverError as error:
        raise InfrastructureError(
            f"Could not find the screen of “{desktop.name}” on {hypervisor.name}: {error}"
        ) from error


def viewer_target(
    *, desktop: Desktop, hypervisor: Hypervisor, user: User, view_only: bool = False
) -> ViewerTarget:
    """Ask the desktop's hypervisor which VNC port its running guest has."""
    ports = graphics_ports(desktop=desktop, hypervisor=hypervisor)
    if ports.vnc_port is None:
        raise viewer_refuse(
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


# --- RDP: a .rdp file for guests that report an IP address ----------------------------------
