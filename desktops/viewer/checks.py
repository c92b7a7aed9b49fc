"""Who may open a desktop's screen, now: the checks every viewer path shares.

The owner opens it; someone else who may act on it (the course's teacher, the school's
manager, an administrator) only looks; anyone else is told the desktop does not exist.
Every refusal is logged with who, which desktop and from where, and, for people who may
see the desktop, noted in its history.
"""

from __future__ import annotations

import logging
from typing import Any

from accounts.models import User
from desktops.choices import DesktopStatus
from desktops.models import Desktop, DesktopEvent, ViewerProtocol
from desktops.permissions import can_act_on_desktop
from hypervisors.models import Hypervisor
from isard.core.errors import (
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
)


class ViewerRefusedError(PermissionDeniedError):
    """A viewer was refused to this person; `extra["reason"]` says why, for code and logs."""


class ViewerUnavailableError(ConflictError):
    """The desktop cannot be viewed now (stopped, no such display, TLS not set up)."""


logger = logging.getLogger(__name__)


def viewer_refuse(
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


def viewer_check_view_only(*, actor: User, desktop: Desktop, client: str = "") -> None:
    """A view-only look is for someone who may act on the desktop and is not its owner."""
    if desktop.owner_id == actor.pk:
        raise viewer_refuse(
            "own-desktop",
            f"“{desktop.name}” is your own desktop: open it with the ordinary viewer.",
            user=actor,
            desktop=desktop,
            client=client,
        )


def viewer_not_found(*, actor: User, desktop: Desktop, client: str) -> NotFoundError:
    """Someone who may not see the desktop: as if it did not exist (the same answer as a
    free id), and nothing written in its history; the log keeps the probe."""
    logger.warning(
        "viewer refused (not-visible): user=%s desktop=%s client=%s",
        actor.get_username(),
        desktop.pk,
        client or "-",
    )
    return NotFoundError("No such desktop.")


def viewer_check(
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
        raise viewer_not_found(actor=actor, desktop=desktop, client=client)
    if view_only:
        viewer_check_view_only(actor=actor, desktop=desktop, client=client)
    elif desktop.owner_id != actor.pk:
        raise viewer_refuse(
            "not-owner",
            f"Only the owner of the desktop “{desktop.name}” may open its viewer.",
            user=actor,
            desktop=desktop,
            client=client,
        )
    elif not can_act_on_desktop(actor, desktop):
        # The owner's own desktop, in a deployment the teacher has hidden for now.
        raise viewer_refuse(
            "hidden",
            f"Your teacher has hidden “{desktop.name}” for now.",
            user=actor,
            desktop=desktop,
            client=client,
        )
    return viewer_check_display(actor=actor, desktop=desktop, protocol=protocol, client=client)


def viewer_check_display(
    *, actor: User, desktop: Desktop, protocol: ViewerProtocol | None, client: str = ""
) -> Hypervisor:
    """The desktop's part of `viewer_check`: running, with the display `protocol` needs.
    On its own for a direct link, whose holder is checked by the link
    (`desktops.viewer.direct_links`), not as a person."""
    if desktop.status != DesktopStatus.STARTED or desktop.hypervisor is None:
        label = DesktopStatus(desktop.status).label.lower()
        raise viewer_refuse(
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
        raise viewer_refuse(
            "no-display",
            f"The desktop “{desktop.name}” has no {kind} display in its hardware profile.",
            user=actor,
            desktop=desktop,
            client=client,
            error=ViewerUnavailableError,
        )
    return desktop.hypervisor


def viewer_event_record(desktop: Desktop, reason: str, actor: User | None) -> None:
    DesktopEvent.objects.create(
        desktop=desktop,
        from_status=desktop.status,
        to_status=desktop.status,
        reason=reason,
        actor=actor,
    )
