"""Who may tunnel through the SPICE gateway, to where: its credentials and its one decision.

A `.vv` file gets a gateway credential (`gateway_credential_issue`); remote-viewer sends it
as Basic proxy authentication with each `CONNECT host:port` (one per SPICE channel). The
gateway asks `gateway_tunnel_authorize` per connection, because the answer depends on
the platform's data at that moment: the credential (valid, unexpired, not revoked), its
desktop (still the owner's, started) and where that desktop's display is now (the host
and SPICE TLS port libvirt reports). Any other target is refused: the gateway is no
general proxy into the hypervisors' network.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from accounts.models import User
from desktops.models import Desktop, GatewayCredential, ViewerProtocol
from desktops.permissions import can_act_on_desktop
from desktops.viewer.checks import viewer_check, viewer_event_record, viewer_refuse
from desktops.viewer.services import graphics_host, hash_token
from hypervisors.drivers import libvirt_driver
from isard.core.errors import ApplicationError, PermissionDeniedError
from isard.core.rate_limits import rate_window_release, rate_window_take

logger = logging.getLogger(__name__)

DEFAULT_CREDENTIAL_SECONDS = 8 * 3600


class GatewayRefusedError(Exception):
    """The gateway's answer to a CONNECT it will not tunnel: an HTTP status and a reason."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class IssuedCredential:
    public_id: str
    secret: str = field(repr=False)
    expires_at: datetime


@dataclass(frozen=True)
class TunnelGrant:
    """Where one tunnel may go: the display of one desktop, nothing else."""

    host: str
    port: int
    desktop_id: int
    user_id: int
    credential_id: str


def credential_lifetime() -> timedelta:
    seconds = getattr(settings, "ISARD_GATEWAY_CREDENTIAL_SECONDS", DEFAULT_CREDENTIAL_SECONDS)
    return timedelta(seconds=seconds)


def gateway_port() -> int:
    """The port `.vv` files send remote-viewer to (0: no gateway, the file names the
    display itself): `ISARD_PUBLIC_PORT` if set; else the HTTPS port when CONNECTs share
    it (`ISARD_GATEWAY_SHARED`); else the gateway's own `ISARD_GATEWAY_PORT`."""
    public = int(getattr(settings, "ISARD_PUBLIC_PORT", 0))
    shared = getattr(settings, "ISARD_GATEWAY_SHARED", False)
    tls_port = int(getattr(settings, "ISARD_TLS_PORT", 0))
    own = int(getattr(settings, "ISARD_GATEWAY_PORT", 0))
    if not own and not (shared and tls_port):
        return 0
    if public:
        return public
    return tls_port if shared and tls_port else own


def gateway_proxy_url(*, credential: IssuedCredential, public_host: str) -> str:
    """The `.vv` file's `proxy=` value: spice-gtk takes the user and password of this URL
    and sends them as `Proxy-Authorization: Basic` with every CONNECT."""
    host = getattr(settings, "ISARD_PUBLIC_HOST", "") or public_host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    return f"http://{credential.public_id}:{credential.secret}@{host}:{gateway_port()}"


def gateway_credential_issue(
    *, actor: User, desktop: Desktop, now: datetime | None = None
) -> IssuedCredential:
    """A fresh credential for `actor` to tunnel to `desktop`'s display (the caller, the
    `.vv` builder, has checked that the actor may open it)."""
    now = now or timezone.now()
    issued = IssuedCredential(
        public_id=secrets.token_hex(8),
        secret=secrets.token_urlsafe(24),
        expires_at=now + credential_lifetime(),
    )
    GatewayCredential.objects.create(
        public_id=issued.public_id,
        key_hash=hash_token(issued.secret),
        user=actor,
        desktop=desktop,
        created_at=now,
        expires_at=issued.expires_at,
    )
    # Expired a day ago: worthless, and dropping this user's keeps the table small.
    GatewayCredential.objects.filter(user=actor, expires_at__lt=now - timedelta(days=1)).delete()
    return issued


def gateway_credential_revoke(*, actor: User, credential: GatewayCredential) -> bool:
    """Stop a `.vv` file's credential opening new tunnels (a file sent to someone else, a
    lost laptop); tunnels open now stay, like the ordinary viewers. Someone who may act on
    the desktop may revoke; it is noted in the desktop's history. False if already revoked.
    """
    if not can_act_on_desktop(actor, credential.desktop):
        raise PermissionDeniedError("You may not revoke the viewer files of this desktop.")
    revoked = GatewayCredential.objects.filter(pk=credential.pk, revoked=False).update(revoked=True)
    if revoked:
        viewer_event_record(
            credential.desktop,
            f"gateway credential {credential.public_id} of {credential.user} revoked",
            actor,
        )
    return bool(revoked)


def _same_host(a: str, b: str) -> bool:
    return a.strip("[]").lower() == b.strip("[]").lower()


#: Refused CONNECTs per client address before the gateway stops looking (429).
DEFAULT_FAILURE_RATE = "30/minute"


def gateway_tunnel_authorize(
    *,
    credential_id: str,
    secret: str,
    host: str,
    port: int,
    client: str = "",
    now: datetime | None = None,
) -> TunnelGrant:
    """May this CONNECT be tunnelled? Raises `GatewayRefusedError` (407: no valid
    credential; 403: not this target, or not now; 429: too many refusals from this
    address, `ISARD_GATEWAY_FAILURE_RATE`, checked before anything else; 502: the
    hypervisor does not answer). Only refusals count: a session's channels and
    reconnects never fill the window. A granted tunnel is a desktop event. Talks to
    libvirt: call it outside a transaction.
    """
    rate = getattr(settings, "ISARD_GATEWAY_FAILURE_RATE", DEFAULT_FAILURE_RATE)
    ident = hashlib.sha256((client or "-").encode()).hexdigest()[:32]
    window = rate_window_take(key=f"throttle_gateway_address_{ident}", rate=rate)
    if not window.allowed:
        logger.warning("gateway refused (too-many-refusals): client=%s", client or "-")
        raise GatewayRefusedError(429, "flood", "Too many refused connections: wait.")
    grant = _authorize(
        credential_id=credential_id, secret=secret, host=host, port=port, client=client, now=now
    )
    rate_window_release(window)
    return grant


def _authorize(
    *,
    credential_id: str,
    secret: str,
    host: str,
    port: int,
    client: str,
    now: datetime | None,
) -> TunnelGrant:
    now = now or timezone.now()
    where = client or "an unknown address"
    record = (
        GatewayCredential.objects.select_related("user", "desktop__hypervisor", "desktop__hardware")
        .filter(public_id=credential_id)
        .first()
    )
    if record is None or not hmac.compare_digest(record.key_hash, hash_token(secret)):
        logger.warning("gateway refused (bad-credential): id=%r client=%s", credential_id, where)
        raise GatewayRefusedError(407, "bad-credential", "Unknown gateway credential.")
    if record.revoked or record.expires_at <= now:
        reason = "revoked" if record.revoked else "expired"
        logger.warning("gateway refused (%s): id=%s client=%s", reason, credential_id, where)
        raise GatewayRefusedError(
            407, reason, "This viewer file expired: download it again from your desktops."
        )
    desktop, user = record.desktop, record.user
    try:
        hypervisor = viewer_check(
            actor=user, desktop=desktop, protocol=ViewerProtocol.SPICE_TLS, client=where
        )
    except ApplicationError as refused:
        raise GatewayRefusedError(
            403, str(refused.extra.get("reason", "refused")), refused.message
        ) from refused
    try:
        ports = libvirt_driver.graphics_ports(hypervisor.uri, desktop.domain_name)
    except libvirt_driver.DriverError as error:
        logger.warning("gateway: no display for desktop %s: %s", desktop.pk, error)
        raise GatewayRefusedError(
            502, "no-display", f"Could not find the screen of “{desktop.name}”."
        ) from error
    expected_host = graphics_host(hypervisor=hypervisor, listen=ports.listen)
    if ports.spice_tls_port != port or not _same_host(expected_host, host):
        raise GatewayRefusedError(
            403,
            "wrong-target",
            viewer_refuse(
                "wrong-target",
                f"The gateway opens only the screen of “{desktop.name}”, not {host}:{port}.",
                user=user,
                desktop=desktop,
                client=where,
            ).message,
        )
    GatewayCredential.objects.filter(pk=record.pk).update(last_used_at=now)
    viewer_event_record(desktop, f"SPICE channel opened through the gateway from {where}", user)
    return TunnelGrant(
        host=expected_host,
        port=port,
        desktop_id=desktop.pk,
        user_id=user.pk,
        credential_id=credential_id,
    )
