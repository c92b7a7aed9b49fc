"""The student's dashboard: my desktops, live, with what I can do to each.

Thin, as every view here: each action loads the desktop through `desktop_get` (so a
desktop that is not yours is "not found") and calls one service. Forms work without
JavaScript (POST, then a redirect with a message); `static/isard/dashboard.js` sends the
same forms with fetch, asks for JSON, and keeps the cards live over the websocket.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Count, OuterRef, Q, QuerySet, Subquery
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from accounts.choices import CourseRole
from accounts.models import User
from accounts.permissions import courses_taught_by
from accounts.services.courses import SESSION_NUMBERS, course_update_settings
from desktops.choices import WORKING_STATUSES, DesktopAction, DesktopStatus, actions_allowed
from desktops.models import Desktop, EarlierDisk
from desktops.permissions import desktops_visible_to
from desktops.pools.selectors import POOL_FREE, pool_counts, pools_managed_by, pools_to_take
from desktops.pools.services import MAX_SIZE, pool_create, pool_delete, pool_get, pool_take
from desktops.services.deployments import (
    BulkOutcome,
    deployment_create,
    deployment_create_missing,
    deployment_delete,
    deployment_recreate,
    deployment_set_visible,
    deployment_start,
    deployment_stop,
    deployments_visible_to,
)
from desktops.services.lifecycle import desktop_get, desktop_shutdown, desktop_start, desktop_stop
from desktops.services.provisioning import desktop_create, desktop_create_from_media
from desktops.services.recycle_bin import desktop_delete, desktop_restore
from desktops.services.renewal import desktop_put_back, desktop_reset_to_template, may_reset
from desktops.services.sessions import extensions_left
from desktops.services.templating import template_from_desktop
from desktops.services.time_limits import desktop_extend
from desktops.services.transitions import desktop_status_payload
from desktops.viewer.direct_links import (
    DirectLinkRow,
    default_link_hours,
    direct_links_create_for_deployment,
    direct_links_revoke_for_deployment,
    max_link_hours,
)
from isard.core.errors import ApplicationError, NotFoundError, PermissionDeniedError
from isard.core.text import csv_cell
from templates_app.models import HardwareProfile, Template
from templates_app.selectors import media_owned_by, templates_visible_to

S = DesktopStatus

#: What a person may ask of a desktop in each status, read from the transition table
#: (`desktops.choices.actions_allowed`); the cards show these buttons and dashboard.js swaps
#: them live from the same table. Services still check everything.
ACTIONS_BY_STATUS: dict[str, list[str]] = {
    status.value: [action.value for action in actions_allowed(status)]
    for status in DesktopStatus
    if actions_allowed(status)
}

#: What only a desktop's owner may do (its screen, its .vv file).
OWNER_ONLY_ACTIONS = frozenset({DesktopAction.OPEN.value, DesktopAction.VV.value})

ACTION_LABELS = {action.value: action.label for action in DesktopAction}

SERVICES: dict[str, Callable[..., Desktop]] = {
    "start": desktop_start,
    "shutdown": desktop_shutdown,
    "stop": desktop_stop,
    "delete": desktop_delete,
    "restore": desktop_restore,
    "reset-to-template": desktop_reset_to_template,
    "put-back": desktop_put_back,
    "extend": desktop_extend,
}

DONE_MESSAGES = {
    "start": "“{name}” is starting.",
    "shutdown": "“{name}” is shutting down.",
    "stop": "“{name}” is being forced off.",
    "delete": "“{name}” went to the recycle bin.",
    "restore": "“{name}” is back from the recycle bin.",
    "reset-to-template": "“{name}” is going back to its template.",
    "put-back": "“{name}” gets its earlier disk back.",
    "extend": "“{name}” has more time.",
}

#: The statuses in which a card offers the reset to the template (the services check it).
RESET_STATUSES = frozenset({S.STOPPED, S.FAILED})


def with_card_details(desktops: QuerySet[Desktop]) -> QuerySet[Desktop]:
    """What `desktop_card` reads besides the desktop: in the same query, not one per card."""
    newest_earlier = EarlierDisk.objects.filter(desktop=OuterRef("pk")).order_by("-put_aside_at")
    return desktops.select_related("template", "owner", "course").annotate(
        earlier_at=Subquery(newest_earlier.values("put_aside_at")[:1])
    )


def _card_tables() -> dict[str, Any]:
    """What every page of cards hands to dashboard.js (and `_cards.html`)."""
    return {
        "actions_by_status": ACTIONS_BY_STATUS,
        "action_labels": ACTION_LABELS,
        "working_statuses": sorted(WORKING_STATUSES),
        "retention_days": settings.ISARD_RECYCLE_RETENTION_DAYS,
        "reset_statuses": sorted(RESET_STATUSES),
    }


def _user(request: HttpRequest) -> User:
    assert isinstance(request.user, User)  # login_required let only signed-in users in
    return request.user


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def desktop_card(desktop: Desktop, viewer: User | None = None) -> dict[str, Any]:
    """What a card shows; the same keys as the websocket's status payload, and more.

    `viewer` is who looks at the card: a teacher's own stopped desktop also offers
    "make a template" (a page of its own, as it asks for a name).
    """
    payload = desktop_status_payload(desktop)
    # Only the owner opens a desktop's screen (the viewers refuse anyone else): a teacher
    # looking at a student's card gets no link that would only say no.
    foreign = viewer is not None and desktop.owner_id != viewer.pk
    actions = [
        action
        for action in ACTIONS_BY_STATUS.get(desktop.status, [])
        if not (foreign and action in OWNER_ONLY_ACTIONS)
    ]
    purge_at = None
    if desktop.deleted_at is not None:
        purge_at = desktop.deleted_at + timedelta(days=settings.ISARD_RECYCLE_RETENTION_DAYS)
    resettable = (
        viewer is not None and desktop.template_id is not None and may_reset(viewer, desktop)
    )
    running_session = desktop.status == S.STARTED and desktop.session_ends_at is not None
    payload.update(
        session_ends=desktop.session_ends_at if running_session else None,
        extensions_left=extensions_left(desktop) if running_session else 0,
        reset=resettable,
        earlier_at=getattr(desktop, "earlier_at", None) if resettable else None,
        template=desktop.template.name if desktop.template else "",
        owner_name=desktop.owner.get_full_name() or desktop.owner.get_username(),
        actions=actions,
        buttons=[{"action": action, "label": ACTION_LABELS[action]} for action in actions],
        foreign=foreign,
        deployment=desktop.deployment_id,
        working=desktop.status in WORKING_STATUSES,
        purge_at=purge_at,
        viewer_url=reverse("desktop-viewer", args=[desktop.pk]),
        vv_url=reverse("desktop-viewer-vv", args=[desktop.pk]),
        # dashboard.js replaces ACTION to post any of the card's actions.
        action_url=reverse("desktop-action", args=[desktop.pk, "start"]).replace("start", "ACTION"),
        template_url=(
            reverse("desktop-make-template", args=[desktop.pk])
            if viewer is not None
            and viewer.is_teacher
            and desktop.owner_id == viewer.pk
            and desktop.status == S.STOPPED
            else ""
        ),
    )
    return payload


@login_required
@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    user = _user(request)
    desktops = (
        desktops_visible_to(user)
        .filter(owner=user)
        .exclude(POOL_FREE)  # a teacher's pools' free desktops are for the students
        .order_by("name", "pk")
    )
    desktops = with_card_details(desktops)
    cards = [desktop_card(d, user) for d in desktops]
    context = {
        "active": [c for c in cards if c["status"] != S.DELETED],
        "recycled": [c for c in cards if c["status"] == S.DELETED],
        "templates": templates_visible_to(user).order_by("name"),
        "pools": pools_to_take(user),
        **_card_tables(),
    }
    if request.GET.get("fragment") == "cards":
        return render(request, "desktops/_cards.html", context)
    return render(request, "desktops/dashboard.html", context)


def _answer(
    request: HttpRequest,
    *,
    message: str,
    ok: bool,
    status: int = 200,
    desktop: Desktop | None = None,
) -> HttpResponse:
    if _wants_json(request):
        body: dict[str, Any] = {"message": message}
        if desktop is not None:
            card = desktop_card(desktop)
            card["purge_at"] = card["purge_at"].isoformat() if card["purge_at"] else None
            body["desktop"] = card
        return JsonResponse(body, status=status)
    (messages.success if ok else messages.error)(request, message)
    return redirect("dashboard")


@login_required
@require_POST
def pool_take_view(request: HttpRequest, pool_id: int) -> HttpResponse:
    """A student opens a pool: a desktop of theirs at once, its viewer if it runs."""
    user = _user(request)
    try:
        pool = pool_get(actor=user, pool_id=pool_id)
        desktop = pool_take(actor=user, pool=pool)
    except NotFoundError:
        return render(request, "desktops/not_found.html", {"what": "pool"}, status=404)
    except ApplicationError as error:
        return _answer(request, message=error.message, ok=False, status=error.status_code)
    if desktop.status == S.STARTED and not _wants_json(request):
        return redirect("desktop-viewer", desktop_id=desktop.pk)
    return _answer(
        request, message=f"“{desktop.name}” is yours: it is starting.", ok=True, desktop=desktop
    )


@login_required
@require_POST
def desktop_new(request: HttpRequest) -> HttpResponse:
    """Create a desktop from a template shared with me."""
    user = _user(request)
    template = templates_visible_to(user).filter(pk=request.POST.get("template") or 0).first()
    if template is None:
        return _answer(
            request, message="Choose one of the templates shared with you.", ok=False, status=400
        )
    name = request.POST.get("name", "").strip() or template.name
    try:
        desktop = desktop_create(actor=user, template=template, name=name)
    except ApplicationError as error:
        return _answer(request, message=error.message, ok=False, status=error.status_code)
    return _answer(
        request,
        message=f"“{desktop.name}” is being created; it is ready in a few seconds.",
        ok=True,
        status=201,
        desktop=desktop,
    )


@login_required
@require_POST
def desktop_action(request: HttpRequest, desktop_id: int, action: str) -> HttpResponse:
    """Start, shut down, force off, delete or restore one of my desktops."""
    service = SERVICES.get(action)
    if service is None:
        return _answer(request, message=f"Unknown action “{action}”.", ok=False, status=404)
    user = _user(request)
    try:
        desktop = desktop_get(actor=user, desktop_id=desktop_id)
        desktop = service(actor=user, desktop=desktop)
    except NotFoundError as error:
        return _answer(request, message=error.message, ok=False, status=404)
    except ApplicationError as error:
        return _answer(request, message=error.message, ok=False, status=error.status_code)
    desktop.refresh_from_db()
    message = DONE_MESSAGES[action].format(name=desktop.name)
    return _answer(request, message=message, ok=True, status=202, desktop=desktop)


@login_required
@require_GET
def course_list(request: HttpRequest) -> HttpResponse:
    """The courses I manage: my classes as a teacher, my school's as a manager."""
    courses = (
        courses_taught_by(_user(request))
        .select_related("school")
        .annotate(
            students=Count(
                "memberships", filter=Q(memberships__role=CourseRole.STUDENT), distinct=True
            ),
            desktop_count=Count("desktops", filter=~Q(desktops__status=S.DELETED), distinct=True),
            running=Count("desktops", filter=Q(desktops__status=S.STARTED), distinct=True),
        )
        .order_by("name")
    )
    return render(request, "desktops/course_list.html", {"courses": courses})


@login_required
@require_GET
def course_detail(request: HttpRequest, course_id: int) -> HttpResponse:
    """A class at a glance: every student's desktops in the course, live."""
    course = courses_taught_by(_user(request)).filter(pk=course_id).first()
    if course is None:
        return render(request, "desktops/not_found.html", {"what": "course"}, status=404)
    desktops = with_card_details(
        Desktop.objects.filter(course=course)
        .exclude(POOL_FREE)
        .order_by("owner__username", "name", "pk")
    )
    cards = [desktop_card(d, _user(request)) for d in desktops]
    memberships = course.memberships.select_related("user").order_by("role", "user__username")
    with_desktop = {card["owner"] for card in cards if card["status"] != S.DELETED}
    context = {
        "course": course,
        "active": [c for c in cards if c["status"] != S.DELETED],
        "recycled": [c for c in cards if c["status"] == S.DELETED],
        "teachers": [m.user for m in memberships if m.role == CourseRole.TEACHER],
        "students": [m.user for m in memberships if m.role == CourseRole.STUDENT],
        "without_desktop": [
            m.user
            for m in memberships
            if m.role == CourseRole.STUDENT and m.user_id not in with_desktop
        ],
        "show_owner": True,
        "deployments": deployments_visible_to(_user(request))
        .filter(course=course, deleted_at__isnull=True)
        .select_related("template", "owner")
        .annotate(
            desktop_count=Count("desktops", filter=~Q(desktops__status=S.DELETED), distinct=True),
            running=Count("desktops", filter=Q(desktops__status=S.STARTED), distinct=True),
        ),
        "templates": templates_visible_to(_user(request)).order_by("name"),
        "deployment_buttons": [
            ("start", "Start all"),
            ("shutdown", "Shut down all"),
            ("stop", "Force off all"),
            ("hide", "Hide"),
            ("show", "Show"),
            ("create-missing", "Create missing"),
            ("recreate", "Recreate all"),
            ("delete", "Delete all"),
        ],
        "socket_path": f"/ws/desktops/?course={course.pk}",
        "pools": [
            (pool, pool_counts(pool))
            for pool in course.pools.filter(deleted_at__isnull=True).order_by("name", "pk")
        ],
        "direct_link_hours": default_link_hours(),
        "direct_link_max_hours": max_link_hours(),
        **_card_tables(),
    }
    if request.GET.get("fragment") == "cards":
        return render(request, "desktops/_cards.html", context)
    return render(request, "desktops/course_detail.html", context)


@login_required
def desktop_make_template(request: HttpRequest, desktop_id: int) -> HttpResponse:
    """Make a template of my stopped desktop: ask for its name, then start the work."""
    user = _user(request)
    try:
        desktop = desktop_get(actor=user, desktop_id=desktop_id)
    except NotFoundError:
        return render(request, "desktops/not_found.html", {"what": "desktop"}, status=404)
    error, status = "", 200
    if request.method == "POST":
        try:
            template = template_from_desktop(
                actor=user,
                desktop_id=desktop.pk,
                name=request.POST.get("name", ""),
                description=request.POST.get("description", ""),
            )
        except ApplicationError as refusal:
            error, status = refusal.message, refusal.status_code
        else:
            messages.success(
                request,
                f"The template “{template.name}” is being made from “{desktop.name}”; "
                "you keep working on the desktop as soon as it is stopped again.",
            )
            return redirect("dashboard")
    return render(
        request,
        "desktops/make_template.html",
        {"desktop": desktop, "error": error, "name": request.POST.get("name", "")},
        status=status,
    )


#: What the course page's deployment buttons do; each is one service of `deployments`.
DEPLOYMENT_ACTIONS: dict[str, Any] = {
    "start": lambda actor, deployment: deployment_start(actor=actor, deployment=deployment),
    "stop": lambda actor, deployment: deployment_stop(
        actor=actor, deployment=deployment, force=True
    ),
    "shutdown": lambda actor, deployment: deployment_stop(actor=actor, deployment=deployment),
    "hide": lambda actor, deployment: deployment_set_visible(
        actor=actor, deployment=deployment, visible=False
    ),
    "show": lambda actor, deployment: deployment_set_visible(
        actor=actor, deployment=deployment, visible=True
    ),
    "create-missing": lambda actor, deployment: deployment_create_missing(
        actor=actor, deployment=deployment
    ),
    "recreate": lambda actor, deployment: deployment_recreate(actor=actor, deployment=deployment),
    "delete": lambda actor, deployment: deployment_delete(actor=actor, deployment=deployment),
}

DEPLOYMENT_DONE = {
    "start": "starting",
    "stop": "forced off",
    "shutdown": "shutting down",
    "hide": "hidden from the students",
    "show": "shown to the students",
    "create-missing": "created",
    "recreate": "recreated from the template",
    "delete": "moved to the recycle bin",
}


def _outcome_message(name: str, action: str, outcome: BulkOutcome) -> str:
    message = f"“{name}”: {len(outcome.changed)} desktop(s) {DEPLOYMENT_DONE[action]}."
    if outcome.refused:
        reasons = "; ".join(f"{d.name}: {why}" for d, why in outcome.refused[:5])
        more = f" (and {len(outcome.refused) - 5} more)" if len(outcome.refused) > 5 else ""
        message += f" Left alone: {reasons}{more}."
    return message


def _chosen_template(request: HttpRequest, user: User) -> Template:
    template = templates_visible_to(user).filter(pk=request.POST.get("template") or 0).first()
    if template is None:
        raise ApplicationError("Choose one of the templates you may use.")
    return template


def _size(request: HttpRequest, field: str) -> int:
    value = request.POST.get(field, "").strip()
    if not value.isdigit():
        raise ApplicationError(f"“{field}”: give a number of desktops (0 to {MAX_SIZE}).")
    return int(value)


@login_required
@require_POST
def course_pool_new(request: HttpRequest, course_id: int) -> HttpResponse:
    """Keep desktops of a template ready for the class: a pool (see `desktops.pools`)."""
    user = _user(request)
    course = courses_taught_by(user).filter(pk=course_id).first()
    if course is None:
        return render(request, "desktops/not_found.html", {"what": "course"}, status=404)
    try:
        template = _chosen_template(request, user)
        pool = pool_create(
            actor=user,
            course=course,
            template=template,
            name=request.POST.get("name", "").strip() or template.name,
            started=_size(request, "started"),
            spare=_size(request, "spare"),
            volatile=request.POST.get("volatile") == "on",
        )
    except ApplicationError as error:
        messages.error(request, error.message)
    else:
        messages.success(
            request,
            f"“{pool.name}”: {pool.started} desktop(s) will be kept running and {pool.spare} "
            "more ready; students get one from their page at once.",
        )
    return redirect("course-page", course_id=course.pk)


@login_required
@require_POST
def pool_delete_view(request: HttpRequest, pool_id: int) -> HttpResponse:
    """The course page's "Delete the pool"."""
    user = _user(request)
    pool = pools_managed_by(user).filter(pk=pool_id).first()
    if pool is None:
        return render(request, "desktops/not_found.html", {"what": "pool"}, status=404)
    pool_delete(actor=user, pool=pool)
    messages.success(
        request, f"“{pool.name}” is deleted: its free desktops go, students keep theirs."
    )
    return redirect("course-page", course_id=pool.course_id)


@login_required
@require_POST
def course_settings(request: HttpRequest, course_id: int) -> HttpResponse:
    """The course's teachers choose whether students may reset their own desktops."""
    user = _user(request)
    course = courses_taught_by(user).filter(pk=course_id).first()
    if course is None:
        return render(request, "desktops/not_found.html", {"what": "course"}, status=404)
    numbers: dict[str, int] = {}
    try:
        for name in SESSION_NUMBERS:
            raw = request.POST.get(name, "").strip()
            if raw:
                if not raw.isdigit():
                    raise ApplicationError(f"“{name}”: give a whole number of minutes.")
                numbers[name] = int(raw)
        course_update_settings(
            actor=user,
            course=course,
            students_may_reset=request.POST.get("students_may_reset") == "on",
            **numbers,
        )
    except ApplicationError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, "The course's settings are saved.")
    return redirect("course-page", course_id=course.pk)


@login_required
@require_POST
def course_deploy(request: HttpRequest, course_id: int) -> HttpResponse:
    """Give a template to every student of the course, in one step."""
    user = _user(request)
    course = courses_taught_by(user).filter(pk=course_id).first()
    if course is None:
        return render(request, "desktops/not_found.html", {"what": "course"}, status=404)
    try:
        template = _chosen_template(request, user)
        deployment, created = deployment_create(
            actor=user,
            course=course,
            template=template,
            name=request.POST.get("name", "").strip() or template.name,
            visible=request.POST.get("visible") == "on",
            volatile=request.POST.get("volatile") == "on",
        )
    except ApplicationError as error:
        messages.error(request, error.message)
    else:
        messages.success(
            request,
            f"“{deployment.name}”: {len(created)} desktop(s) are being created for the class.",
        )
    return redirect("course-page", course_id=course.pk)


@login_required
@require_POST
def deployment_action(request: HttpRequest, deployment_id: int, action: str) -> HttpResponse:
    user = _user(request)
    deployment = deployments_visible_to(user).filter(pk=deployment_id).first()
    if deployment is None or action not in DEPLOYMENT_ACTIONS:
        return render(request, "desktops/not_found.html", {"what": "deployment"}, status=404)
    try:
        outcome = DEPLOYMENT_ACTIONS[action](user, deployment)
    except ApplicationError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, _outcome_message(deployment.name, action, outcome))
    return redirect("course-page", course_id=deployment.course_id)


# --- direct links of a deployment: a CSV to hand out, and revoking them all ------------------


def _direct_links_csv(request: HttpRequest, rows: list[DirectLinkRow]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["username", "desktop", "url", "expires_at"])
    for row in rows:
        writer.writerow(
            [
                csv_cell(row.username),
                csv_cell(row.desktop_name),
                request.build_absolute_uri(row.path),
                row.expires_at.isoformat(),
            ]
        )
    return out.getvalue()


def _deployment_or_none(user: User, deployment_id: int) -> Any:
    return deployments_visible_to(user).filter(pk=deployment_id).first()


@login_required
@require_POST
def deployment_direct_links_csv(request: HttpRequest, deployment_id: int) -> HttpResponse:
    """New direct links for every desktop of the deployment, as a CSV download."""
    user = _user(request)
    deployment = _deployment_or_none(user, deployment_id)
    if deployment is None:
        return render(request, "desktops/not_found.html", {"what": "deployment"}, status=404)
    raw_hours = request.POST.get("hours", "").strip()
    try:
        hours = int(raw_hours) if raw_hours else None
        rows = direct_links_create_for_deployment(actor=user, deployment=deployment, hours=hours)
    except ValueError:
        messages.error(request, "Write the hours the links work as a whole number.")
        return redirect("course-page", course_id=deployment.course_id)
    except ApplicationError as error:
        messages.error(request, error.message)
        return redirect("course-page", course_id=deployment.course_id)
    response = HttpResponse(_direct_links_csv(request, rows), content_type="text/csv")
    response["Content-Disposition"] = (
        f'attachment; filename="direct-links-deployment-{deployment.pk}.csv"'
    )
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def deployment_direct_links_revoke(request: HttpRequest, deployment_id: int) -> HttpResponse:
    """Revoke every live direct link to the deployment's desktops."""
    user = _user(request)
    deployment = _deployment_or_none(user, deployment_id)
    if deployment is None:
        return render(request, "desktops/not_found.html", {"what": "deployment"}, status=404)
    try:
        revoked = direct_links_revoke_for_deployment(actor=user, deployment=deployment)
    except ApplicationError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, f"“{deployment.name}”: {revoked} direct link(s) revoked.")
    return redirect("course-page", course_id=deployment.course_id)


# --- installing a new desktop from media (the media page's form) -----------------------------


@login_required
@require_POST
def media_install_desktop(request: HttpRequest) -> HttpResponse:
    """A new desktop that boots the chosen ISO on an empty disk: install, then make a template."""
    user = _user(request)
    try:
        media = media_owned_by(user, int(request.POST.get("media") or 0))
        hardware = HardwareProfile.objects.filter(pk=request.POST.get("hardware") or 0).first()
        if hardware is None:
            raise ApplicationError("Choose a hardware profile.")
        if not user.is_teacher:
            raise PermissionDeniedError("Only teachers can install desktops from media.")
        desktop = desktop_create_from_media(
            actor=user,
            media=media,
            hardware=hardware,
            name=request.POST.get("name", "").strip() or media.name,
        )
    except ApplicationError as error:
        messages.error(request, error.message)
        return redirect("media-page")
    messages.success(
        request,
        f"“{desktop.name}” is being created with {media.name} in its CD drive; start it "
        "and open it to install.",
    )
    return redirect("dashboard")
