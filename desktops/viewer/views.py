"""Pages that open a desktop: the browser viewer, a fresh token to reconnect, the .vv file.

Thin: each view loads the desktop and calls one service in `desktops.viewer.services`; refusals
come back as the service's `ApplicationError` and are shown with its status code.
Responses that carry a token are never cached. No response carries the graphics password:
the proxy signs in to the display itself.

The browser viewer is interactive for the desktop's owner and view-only for anyone else
(the course's teacher, who may act on the desktop: the service decides who may look).
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.request import split_domain_port
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_POST

from accounts.models import User
from desktops.models import Desktop
from desktops.permissions import can_act_on_desktop
from desktops.viewer.direct_links import (
    DirectLinkOpening,
    direct_link_open,
    direct_link_viewer_access,
)
from desktops.viewer.files import viewer_rdp_build, viewer_vv_build
from desktops.viewer.services import BrowserViewerAccess, viewer_token_issue
from isard.core.errors import ApplicationError, NotFoundError


def _desktop(desktop_id: int) -> Desktop:
    desktop = Desktop.objects.select_related("hypervisor", "hardware").filter(pk=desktop_id).first()
    if desktop is None:
        raise NotFoundError("No such desktop.")
    return desktop


def _user(request: HttpRequest) -> User:
    assert isinstance(request.user, User)  # login_required let only signed-in users in
    return request.user


def _access_payload(access: BrowserViewerAccess) -> dict[str, object]:
    return {
        "desktop": access.desktop_id,
        "name": access.desktop_name,
        "path": access.websocket_path,
        "expires_at": access.expires_at.isoformat(),
        "view_only": access.view_only,
    }


def _issue(request: HttpRequest, desktop_id: int) -> BrowserViewerAccess:
    """The owner's token, or a view-only one for someone else who may act on the desktop;
    anyone else is refused as a stranger to it (by the service, which checks again)."""
    actor = _user(request)
    desktop = _desktop(desktop_id)
    view_only = desktop.owner_id != actor.pk and can_act_on_desktop(actor, desktop)
    return viewer_token_issue(actor=actor, desktop=desktop, view_only=view_only)


@never_cache
@login_required
@require_GET
def viewer_page(request: HttpRequest, desktop_id: int) -> HttpResponse:
    """The noVNC page for a running desktop: the owner's, or a view-only look."""
    try:
        access = _issue(request, desktop_id)
    except ApplicationError as error:
        return render(
            request,
            "desktops/viewer.html",
            {"refusal": error.message, "reason": error.extra.get("reason", "")},
            status=error.status_code,
        )
    context = {
        "access": _access_payload(access),
        "view_only": access.view_only,
        "desktop_name": access.desktop_name,
        "token_url": reverse("desktop-viewer-token", args=[access.desktop_id]),
        "vv_url": reverse("desktop-viewer-vv", args=[access.desktop_id]),
        "rdp_url": reverse("desktop-viewer-rdp", args=[access.desktop_id]),
        "rdp_gateway": getattr(settings, "ISARD_RDP_GATEWAY", ""),
    }
    return render(request, "desktops/viewer.html", context)


@never_cache
@login_required
@require_POST
def viewer_token(request: HttpRequest, desktop_id: int) -> JsonResponse:
    """A new token for the viewer page to reconnect with (to wherever the desktop runs now)."""
    try:
        access = _issue(request, desktop_id)
    except ApplicationError as error:
        return JsonResponse(
            {"message": error.message, "extra": error.extra}, status=error.status_code
        )
    return JsonResponse(_access_payload(access))


@never_cache
@login_required
@require_GET
def viewer_vv(request: HttpRequest, desktop_id: int) -> HttpResponse:
    """Download a `.vv` file that opens the desktop in remote-viewer over TLS."""
    try:
        # The name this person reached the platform at is one their device resolves.
        public_host, _ = split_domain_port(request.get_host())
        vv = viewer_vv_build(
            actor=_user(request), desktop=_desktop(desktop_id), public_host=public_host
        )
    except ApplicationError as error:
        return HttpResponse(
            error.message, status=error.status_code, content_type="text/plain; charset=utf-8"
        )
    response = HttpResponse(vv.content, content_type="application/x-virt-viewer")
    response["Content-Disposition"] = f'attachment; filename="{vv.filename}"'
    return response


@never_cache
@login_required
@require_GET
def viewer_rdp(request: HttpRequest, desktop_id: int) -> HttpResponse:
    """Download an `.rdp` file for a guest that reports its IP address (guest agent)."""
    try:
        rdp = viewer_rdp_build(actor=_user(request), desktop=_desktop(desktop_id))
    except ApplicationError as error:
        return HttpResponse(
            error.message, status=error.status_code, content_type="text/plain; charset=utf-8"
        )
    response = HttpResponse(rdp.content, content_type="application/x-rdp")
    response["Content-Disposition"] = f'attachment; filename="{rdp.filename}"'
    return response


# --- direct links: the same viewer page, for whoever holds the link ----------------------------


def _client(request: HttpRequest) -> str:
    return str(request.META.get("REMOTE_ADDR") or "")


def _opening_payload(opening: DirectLinkOpening) -> dict[str, object]:
    if opening.access is not None:
        return _access_payload(opening.access)
    return {"status": opening.status.value, "status_label": opening.status.label}


@never_cache
@ensure_csrf_cookie
@require_GET
def direct_link_page(request: HttpRequest, token: str) -> HttpResponse:
    """`/v/<token>/`: no sign-in. Starts the desktop if it is stopped, then the viewer;
    while it starts, the page asks `direct-link-token` until it runs."""
    try:
        opening = direct_link_open(token=token, client=_client(request))
    except ApplicationError as error:
        return render(
            request,
            "desktops/viewer.html",
            {"refusal": error.message, "reason": error.extra.get("reason", ""), "direct": True},
            status=error.status_code,
        )
    context = {
        "access": _access_payload(opening.access) if opening.access is not None else None,
        "waiting": opening.access is None,
        "status_label": opening.status.label,
        "direct": True,
        "view_only": False,
        "desktop_name": opening.link.desktop.name,
        "token_url": reverse("direct-link-token", args=[token]),
    }
    return render(request, "desktops/viewer.html", context)


@never_cache
@require_POST
def direct_link_token(request: HttpRequest, token: str) -> JsonResponse:
    """A viewer token for the direct link's page (200), or the status it still waits on
    (202: starting); a link that stopped working is 404, like one that never did."""
    try:
        opening = direct_link_viewer_access(token=token, client=_client(request))
    except ApplicationError as error:
        return JsonResponse(
            {"message": error.message, "extra": error.extra}, status=error.status_code
        )
    return JsonResponse(_opening_payload(opening), status=200 if opening.access else 202)
