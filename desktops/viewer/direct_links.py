"""Direct viewer links: a URL that opens one desktop's browser viewer without signing in.

For exams and guests without accounts. Someone who manages the desktop (its course's
teacher, the school's manager, an administrator: `can_act_on_desktop`, students excepted)
makes a link for one desktop (`direct_link_create`) or one per desktop of a deployment
(`direct_links_create_for_deployment`, the rows of a CSV). Whoever opens `/v/<token>/`
gets the owner's interactive viewer; a stopped desktop is started for them through the
ordinary start service, on behalf of the link's maker (placement and quotas as for any
start). A link lives `ISARD_DIRECT_LINK_HOURS` unless its maker chooses (up to
`ISARD_DIRECT_LINK_MAX_HOURS`), and can be revoked (one, or all of a deployment's).

Only a SHA-256 of the secret is stored; the URL is shown once. A link that does not work
(unknown, revoked, expired, its maker no longer over the desktop) is "not found" to whoever
holds it, so a refusal does not say whether it existed; the log keeps why and, for a link
that existed, its desktop's history too. Wrong tokens are limited per client address
(`ISARD_DIRECT_LINK_FAILURE_RATE`, 429). Every use is an event on the desktop.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, QuerySet
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from accounts.permissions import sees_own_desktops_only
from desktops.choices import DesktopStatus
from desktops.models import Deployment, Desktop, DirectLink
from desktops.permissions import can_act_on_desktop, desktops_visible_to
from desktops.services.deployments import can_manage_deployment, deployment_desktops
from desktops.services.lifecycle import desktop_start
from desktops.viewer.checks import viewer_event_record
from desktops.viewer.services import BrowserViewerAccess, hash_token, viewer_token_issue_direct
from isard.core.errors import (
    ApplicationError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    TooManyRequestsError,
)
from isard.core.rate_limits import rate_window_release, rate_window_take

logger = logging.getLogger(__name__)

S = DesktopStatus

DEFAULT_LINK_HOURS = 24
DEFAULT_MAX_LINK_HOURS = 30 * 24
#: Wrong direct-link tokens per client address before the page answers 429.
DEFAULT_FAILURE_RATE = "20/minute"
NOT_FOUND_MESSAGE = "This link does not open anything: ask for a new one."


@dataclass(frozen=True)
class IssuedDirectLink:
    """A link just made: `path` (with its secret) is never shown again."""

    link: DirectLink
    path: str = field(repr=False)


@dataclass(frozen=True)
class DirectLinkRow:
    """One line of a deployment's CSV of links."""

    username: str
    desktop_name: str
    desktop_id: int
    link_id: int
    path: str = field(repr=False)
    expires_at: datetime


@dataclass(frozen=True)
class DirectLinkOpening:
    """What the anonymous page shows: the viewer (`access`), or the status it waits on."""

    link: DirectLink
    status: DesktopStatus
    access: BrowserViewerAccess | None = None


# --- settings --------------------------------------------------------------------------------


def default_link_hours() -> int:
    return int(getattr(settings, "ISARD_DIRECT_LINK_HOURS", DEFAULT_LINK_HOURS))


def max_link_hours() -> int:
    return int(getattr(settings, "ISARD_DIRECT_LINK_MAX_HOURS", DEFAULT_MAX_LINK_HOURS))


def link_lifetime(hours: int | None) -> timedelta:
    """`hours` (None: the default), between one hour and the maximum."""
    chosen = default_link_hours() if hours is None else hours
    if not 1 <= chosen <= max_link_hours():
        raise ApplicationError(
            f"A direct link lives between 1 and {max_link_hours()} hours.",
            extra={"fields": {"hours": [f"Between 1 and {max_link_hours()}."]}},
        )
    return timedelta(hours=chosen)


def direct_link_path(token: str) -> str:
    return reverse("direct-link", args=[token])


# --- who may make and revoke them ------------------------------------------------------------


def can_manage_direct_links(actor: User, desktop: Desktop) -> bool:
    """Someone over the desktop who is not a student: a student who owns it may see it,
    but may not hand its screen to whoever holds a URL."""
    return not sees_own_desktops_only(actor) and can_act_on_desktop(actor, desktop)


def _check_may_manage(actor: User, desktop: Desktop) -> None:
    if not can_act_on_desktop(actor, desktop):
        raise NotFoundError("No such desktop.")
    if sees_own_desktops_only(actor):
        raise PermissionDeniedError("Only a teacher makes or revokes direct links.")


def _check_may_manage_deployment(actor: User, deployment: Deployment) -> None:
    if not can_manage_deployment(actor, deployment):
        raise NotFoundError("No such deployment.")


def direct_links_visible_to(actor: User) -> QuerySet[DirectLink]:
    """The links of the desktops the person may make links for (none for a student)."""
    if sees_own_desktops_only(actor):
        return DirectLink.objects.none()
    links = DirectLink.objects.select_related("desktop", "created_by")
    if actor.is_admin:
        return links
    return links.filter(desktop__in=desktops_visible_to(actor).values("pk"))


# --- making them -----------------------------------------------------------------------------


def _make(*, actor: User, desktop: Desktop, lifetime: timedelta, now: datetime) -> IssuedDirectLink:
    token = secrets.token_urlsafe(32)
    link = DirectLink.objects.create(
        key_hash=hash_token(token),
        desktop=desktop,
        created_by=actor,
        created_at=now,
        expires_at=now + lifetime,
    )
    viewer_event_record(
        desktop,
        f"direct link {link.pk} made by {actor.get_username()}, "
        f"valid until {link.expires_at:%Y-%m-%d %H:%M} UTC",
        actor,
    )
    return IssuedDirectLink(link=link, path=direct_link_path(token))


def _check_usable(desktop: Desktop) -> None:
    if desktop.deleted_at is not None or desktop.status in (S.DELETING, S.DELETED):
        raise ConflictError(
            f"The desktop “{desktop.name}” is in the recycle bin.", extra={"status": desktop.status}
        )


def direct_link_create(
    *, actor: User, desktop: Desktop, hours: int | None = None, now: datetime | None = None
) -> IssuedDirectLink:
    """A new direct link to `desktop`'s browser viewer, valid `hours` (None: the default)."""
    _check_may_manage(actor, desktop)
    _check_usable(desktop)
    lifetime = link_lifetime(hours)
    with transaction.atomic():
        return _make(actor=actor, desktop=desktop, lifetime=lifetime, now=now or timezone.now())


def direct_links_create_for_deployment(
    *,
    actor: User,
    deployment: Deployment,
    hours: int | None = None,
    now: datetime | None = None,
) -> list[DirectLinkRow]:
    """One new link per current desktop of the deployment, ordered by student: the rows
    of the CSV a teacher hands out. All or none (one transaction)."""
    _check_may_manage_deployment(actor, deployment)
    if deployment.deleted_at is not None:
        raise ConflictError(f"The deployment “{deployment.name}” is in the recycle bin.")
    lifetime = link_lifetime(hours)
    now = now or timezone.now()
    rows: list[DirectLinkRow] = []
    with transaction.atomic():
        for desktop in deployment_desktops(deployment):
            issued = _make(actor=actor, desktop=desktop, lifetime=lifetime, now=now)
            rows.append(
                DirectLinkRow(
                    username=desktop.owner.get_username(),
                    desktop_name=desktop.name,
                    desktop_id=desktop.pk,
                    link_id=issued.link.pk,
                    path=issued.path,
                    expires_at=issued.link.expires_at,
                )
            )
    logger.info(
        "direct links: %d made for deployment %s by user %s", len(rows), deployment.pk, actor.pk
    )
    return rows


# --- revoking them ---------------------------------------------------------------------------


def direct_link_revoke(*, actor: User, link: DirectLink, now: datetime | None = None) -> bool:
    """Stop the link opening anything (viewers open now stay, as for the ordinary
    viewer). False if it was revoked already."""
    _check_may_manage(actor, link.desktop)
    now = now or timezone.now()
    with transaction.atomic():
        revoked = DirectLink.objects.filter(pk=link.pk, revoked_at__isnull=True).update(
            revoked_at=now
        )
        if revoked:
            viewer_event_record(
                link.desktop, f"direct link {link.pk} revoked by {actor.get_username()}", actor
            )
    link.refresh_from_db()
    return bool(revoked)


def direct_links_revoke_for_deployment(
    *, actor: User, deployment: Deployment, now: datetime | None = None
) -> int:
    """Revoke every live link to a desktop of the deployment; how many were revoked."""
    _check_may_manage_deployment(actor, deployment)
    now = now or timezone.now()
    with transaction.atomic():
        live = DirectLink.objects.filter(
            desktop__deployment=deployment, revoked_at__isnull=True, expires_at__gt=now
        ).select_related("desktop")
        links = list(live.select_for_update(of=("self",)))
        DirectLink.objects.filter(pk__in=[link.pk for link in links]).update(revoked_at=now)
        for link in links:
            viewer_event_record(
                link.desktop, f"direct link {link.pk} revoked by {actor.get_username()}", actor
            )
    logger.info(
        "direct links: %d revoked for deployment %s by user %s", len(links), deployment.pk, actor.pk
    )
    return len(links)


# --- opening them ----------------------------------------------------------------------------


def _not_found(reason: str, *, link: DirectLink | None, client: str) -> NotFoundError:
    """The one answer to a link that does not work; why is in the log (and, for a link
    that existed, in its desktop's history)."""
    where = client or "an unknown address"
    logger.warning(
        "direct link refused (%s): link=%s client=%s",
        reason,
        link.pk if link is not None else "-",
        where,
    )
    if link is not None:
        viewer_event_record(
            link.desktop, f"direct link {link.pk} refused ({reason}) from {where}", None
        )
    return NotFoundError(NOT_FOUND_MESSAGE)


def _refusal_reason(link: DirectLink, now: datetime) -> str | None:
    if link.revoked_at is not None:
        return "revoked"
    if link.expires_at <= now:
        return "expired"
    desktop = link.desktop
    if desktop.deleted_at is not None or desktop.status in (S.DELETING, S.DELETED):
        return "desktop-deleted"
    if not can_manage_direct_links(link.created_by, desktop):
        return "maker-no-longer-manages"
    return None


def direct_link_resolve(*, token: str, client: str = "", now: datetime | None = None) -> DirectLink:
    """The live link this token names, or `NotFoundError` (whatever the reason) and
    `TooManyRequestsError` (429) once this address made too many wrong tries: checked
    first, so the answer then says nothing about the token. Only refusals count."""
    rate = getattr(settings, "ISARD_DIRECT_LINK_FAILURE_RATE", DEFAULT_FAILURE_RATE)
    ident = hashlib.sha256((client or "-").encode()).hexdigest()[:32]
    window = rate_window_take(key=f"throttle_direct_link_address_{ident}", rate=rate)
    if not window.allowed:
        wait = window.retry_after()
        logger.warning("direct link refused (too-many-failures): client=%s", client or "-")
        raise TooManyRequestsError(
            f"Too many links that open nothing from this address. Wait {wait} s and try again.",
            extra={"retry_after": wait},
        )
    now = now or timezone.now()
    link = (
        DirectLink.objects.select_related(
            "created_by", "desktop__owner", "desktop__hypervisor", "desktop__hardware"
        )
        .filter(key_hash=hash_token(token))
        .first()
    )
    if link is None:
        raise _not_found("unknown", link=None, client=client)
    reason = _refusal_reason(link, now)
    if reason is not None:
        raise _not_found(reason, link=link, client=client)
    rate_window_release(window)
    return link


def direct_link_open(
    *, token: str, client: str = "", now: datetime | None = None
) -> DirectLinkOpening:
    """Someone opened the link's page: count the use (an event on the desktop), start the
    desktop if it is stopped (on behalf of the link's maker: refusals such as a quota or
    no capacity come back as the start service raised them), and give a viewer token
    when it runs. Talks to libvirt (the viewer's token checks the display): call it
    outside a transaction."""
    now = now or timezone.now()
    link = direct_link_resolve(token=token, client=client, now=now)
    desktop = link.desktop
    where = client or "an unknown address"
    DirectLink.objects.filter(pk=link.pk).update(uses=F("uses") + 1, last_used_at=now)
    viewer_event_record(
        desktop,
        f"opened through direct link {link.pk} (made by {link.created_by.get_username()}) "
        f"from {where}",
        None,
    )
    if desktop.status in (S.STOPPED, S.FAILED):
        desktop = desktop_start(actor=link.created_by, desktop=desktop)
        link.desktop = desktop
    return _opening(link=link, client=client, now=now)


def direct_link_viewer_access(
    *, token: str, client: str = "", now: datetime | None = None
) -> DirectLinkOpening:
    """The page asks again (while the desktop starts, or to reconnect): a viewer token
    when it runs, its status while it is on its way; no new use is counted. A desktop
    that stopped or failed meanwhile is `ConflictError` (open the link again)."""
    now = now or timezone.now()
    link = direct_link_resolve(token=token, client=client, now=now)
    desktop = link.desktop
    if desktop.status in (S.STOPPED, S.FAILED):
        label = DesktopStatus(desktop.status).label.lower()
        detail = f" ({desktop.status_reason})" if desktop.status_reason else ""
        raise ConflictError(
            f"The desktop “{desktop.name}” is {label}{detail}: open the link again to start it.",
            extra={"status": desktop.status},
        )
    return _opening(link=link, client=client, now=now)


def _opening(*, link: DirectLink, client: str, now: datetime) -> DirectLinkOpening:
    status = DesktopStatus(link.desktop.status)
    if status != S.STARTED:
        return DirectLinkOpening(link=link, status=status)
    access = viewer_token_issue_direct(link=link, client=client, now=now)
    return DirectLinkOpening(link=link, status=status, access=access)
