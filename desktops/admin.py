"""Desktops, deployments and viewer tokens in the admin, scoped by role.

A teacher sees their own desktops and those of the courses they teach, and acts on them
through the desktop services (start, shut down, force off, recycle, restore, make a
template of their own stopped desktop); a started desktop of someone else has a
"view only" link to its screen. Deployments (desktops/services/deployments.py) are listed for the
people who may act on them (owner, co-teachers, the school's manager, admins), and every
change goes through an action that calls one deployment service: the admin never edits a
deployment's rows itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, cast

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from accounts.admin_scope import (
    ActionsOnlyAdmin,
    ManagerAccess,
    RoleScopedMixin,
    ScopedModelAdmin,
)
from accounts.models import User
from desktops.choices import DesktopStatus
from desktops.fleet import admin as fleet_admin  # noqa: F401  (registers the hosts' pages)
from desktops.models import (
    Deployment,
    Desktop,
    DesktopEvent,
    DirectLink,
    GatewayCredential,
    ViewerToken,
)
from desktops.permissions import desktops_visible_to
from desktops.pools import admin as pools_admin  # noqa: F401  (registers the pools' page)
from desktops.services.deployments import (
    BulkOutcome,
    deployment_create_missing,
    deployment_delete,
    deployment_desktops,
    deployment_recreate,
    deployment_set_visible,
    deployment_start,
    deployment_stop,
    deployments_visible_to,
)
from desktops.services.lifecycle import desktop_shutdown, desktop_start, desktop_stop
from desktops.services.recycle_bin import desktop_delete, desktop_restore
from desktops.services.renewal import desktop_put_back, desktop_reset_to_template
from desktops.services.templating import template_from_desktop
from desktops.viewer.direct_links import direct_link_revoke
from desktops.viewer.gateway_access import gateway_credential_revoke
from isard.core.errors import ApplicationError


class DesktopEventInline(RoleScopedMixin, admin.TabularInline):
    manager_access: ClassVar[ManagerAccess] = "read"
    teacher_access: ClassVar[ManagerAccess] = "read"
    model = DesktopEvent
    extra = 0
    can_delete = False
    readonly_fields = ("created_at", "from_status", "to_status", "reason", "actor")

    def scope_queryset(self, actor: User, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(desktop__in=desktops_visible_to(actor))

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return False


#: The admin's desktop actions and the service each one calls.
_DESKTOP_ACTIONS: dict[str, Callable[..., Desktop]] = {
    "start": desktop_start,
    "shutdown": desktop_shutdown,
    "stop": desktop_stop,
    "delete": desktop_delete,
    "restore": desktop_restore,
    "reset_to_template": desktop_reset_to_template,
    "put_back": desktop_put_back,
}
_DESCRIPTIONS = {
    "reset_to_template": "Reset selected desktops to the template (earlier disk to the bin)",
    "put_back": "Put back the newest earlier disk of selected desktops",
}


def _run(action: str) -> Any:
    service = _DESKTOP_ACTIONS[action]

    def run(
        modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Desktop]
    ) -> None:
        done = 0
        for desktop in queryset:
            try:
                service(actor=cast(User, request.user), desktop=desktop)
                done += 1
            except ApplicationError as error:
                modeladmin.message_user(request, f"{desktop}: {error.message}", messages.ERROR)
        if done:
            modeladmin.message_user(request, f"{action}: {done} desktop(s).", messages.SUCCESS)

    run.__name__ = f"action_{action}"
    run.short_description = _DESCRIPTIONS.get(  # type: ignore[attr-defined]
        action, f"{action.capitalize()} selected desktops"
    )
    return run


@admin.action(description="Make a template of each selected (stopped) desktop")
def make_template(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Desktop]
) -> None:
    for desktop in queryset:
        name = f"{desktop.name} ({timezone.localtime():%Y-%m-%d %H:%M})"
        try:
            template_from_desktop(actor=cast(User, request.user), desktop_id=desktop.pk, name=name)
            modeladmin.message_user(request, f"Making the template “{name}”.", messages.SUCCESS)
        except ApplicationError as error:
            modeladmin.message_user(request, f"{desktop}: {error.message}", messages.ERROR)


@admin.register(Desktop)
class DesktopAdmin(ScopedModelAdmin):
    manager_access: ClassVar[ManagerAccess] = "write"
    teacher_access: ClassVar[ManagerAccess] = "act"
    list_display = (
        "name",
        "owner",
        "course",
        "template",
        "status",
        "hypervisor",
        "status_changed_at",
        "screen",
    )
    list_filter = ("status", "hypervisor", ("course", admin.RelatedOnlyFieldListFilter))
    search_fields = ("name", "owner__username")
    # The graphics password never leaves the server (the viewer proxy signs in itself).
    exclude = ("graphics_password",)
    readonly_fields = (
        "uuid",
        "status",
        "status_reason",
        "status_changed_at",
        "disk",
        "hypervisor",
        "deleted_at",
        "session_ends_at",
        "session_warn_at",
        "session_extensions_used",
        "screen",
    )
    inlines = [DesktopEventInline]
    actions = [
        *(_run(a) for a in ("start", "shutdown", "stop", "delete", "restore")),
        _run("reset_to_template"),
        _run("put_back"),
        make_template,
    ]

    def scope_queryset(self, actor: User, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(pk__in=desktops_visible_to(actor).values("pk"))

    @admin.display(description="screen")
    def screen(self, desktop: Desktop) -> SafeString:
        """The browser viewer: the owner's own, view-only for anyone else who may act on
        it (`desktops.viewer.views`); the viewer page checks the person again."""
        if desktop.pk is None or desktop.status != DesktopStatus.STARTED:
            return format_html("{}", "-")
        return format_html(
            '<a href="{}" target="_blank" rel="noopener">open (view only unless yours)</a>',
            reverse("desktop-viewer", args=[desktop.pk]),
        )


# --- deployments ---------------------------------------------------------------------------


def _deployment_action(description: str, act: Callable[[User, Deployment], BulkOutcome]) -> Any:
    """An admin action that runs one deployment service per selected deployment and says,
    per desktop, what was refused."""

    def run(
        modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Deployment]
    ) -> None:
        actor = cast(User, request.user)
        for deployment in queryset:
            try:
                outcome = act(actor, deployment)
            except ApplicationError as error:
                modeladmin.message_user(request, f"{deployment}: {error.message}", messages.ERROR)
                continue
            modeladmin.message_user(
                request, f"{deployment}: {len(outcome.changed)} desktop(s) changed."
            )
            for desktop, reason in outcome.refused:
                modeladmin.message_user(request, f"{desktop}: {reason}", messages.WARNING)

    run.__name__ = "deployment_" + "".join(c if c.isalnum() else "_" for c in description.lower())
    run.short_description = description  # type: ignore[attr-defined]
    return run


@admin.register(Deployment)
class DeploymentAdmin(ActionsOnlyAdmin):
    """A course's deployments with each student's desktop and its status.

    Read-only for everyone, administrators included: deployments are made on the course
    page or through the API (they need a template and the students), and every change is
    an action that calls `desktops.deployments`, which checks the person again.
    """

    manager_access: ClassVar[ManagerAccess] = "act"
    teacher_access: ClassVar[ManagerAccess] = "act"
    list_display = ("name", "course", "template", "owner", "visible", "desktop_statuses")
    list_filter = ("visible", ("course", admin.RelatedOnlyFieldListFilter))
    search_fields = ("name", "course__name")
    fields = (
        "name",
        "description",
        "course",
        "template",
        "owner",
        "co_teachers",
        "whole_course",
        "visible",
        "deleted_at",
        "created_at",
        "student_desktops",
    )
    readonly_fields = fields
    actions = [
        _deployment_action(
            "Start every desktop",
            lambda actor, d: deployment_start(actor=actor, deployment=d),
        ),
        _deployment_action(
            "Shut down every desktop",
            lambda actor, d: deployment_stop(actor=actor, deployment=d),
        ),
        _deployment_action(
            "Force off every desktop",
            lambda actor, d: deployment_stop(actor=actor, deployment=d, force=True),
        ),
        _deployment_action(
            "Hide from the students (shuts their desktops down)",
            lambda actor, d: deployment_set_visible(actor=actor, deployment=d, visible=False),
        ),
        _deployment_action(
            "Show to the students",
            lambda actor, d: deployment_set_visible(actor=actor, deployment=d, visible=True),
        ),
        _deployment_action(
            "Create the missing desktops (students who joined later)",
            lambda actor, d: deployment_create_missing(actor=actor, deployment=d),
        ),
        _deployment_action(
            "Recreate every desktop (stopped ones; the old go to the recycle bin)",
            lambda actor, d: deployment_recreate(actor=actor, deployment=d),
        ),
        _deployment_action(
            "Delete (to the recycle bin, with its desktops)",
            lambda actor, d: deployment_delete(actor=actor, deployment=d),
        ),
    ]

    def scope_queryset(self, actor: User, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(pk__in=deployments_visible_to(actor).values("pk"))

    @admin.display(description="desktops")
    def desktop_statuses(self, deployment: Deployment) -> str:
        desktops = list(deployment_desktops(deployment))
        started = sum(1 for d in desktops if d.status == DesktopStatus.STARTED)
        return f"{len(desktops)} ({started} started)"

    @admin.display(description="students' desktops")
    def student_desktops(self, deployment: Deployment) -> SafeString:
        rows = format_html_join(
            "",
            "<tr><th scope='row'>{}</th><td><a href='{}'>{}</a></td><td>{}</td></tr>",
            (
                (
                    desktop.owner.get_username(),
                    reverse("admin:desktops_desktop_change", args=[desktop.pk]),
                    desktop.name,
                    DesktopStatus(desktop.status).label,
                )
                for desktop in deployment_desktops(deployment)
            ),
        )
        return format_html(
            "<table><thead><tr><th scope='col'>student</th><th scope='col'>desktop</th>"
            "<th scope='col'>status</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )


# Issue 5: the audit of viewer tokens.


@admin.register(ViewerToken)
class ViewerTokenAdmin(ScopedModelAdmin):
    """Who opened which desktop's viewer, when, from where, and whether view-only."""

    manager_access: ClassVar[ManagerAccess] = "read"
    teacher_access: ClassVar[ManagerAccess] = "read"

    def scope_queryset(self, actor: User, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(desktop__in=desktops_visible_to(actor))

    list_display = (
        "desktop",
        "user",
        "protocol",
        "view_only",
        "created_at",
        "expires_at",
        "used_at",
        "used_from",
    )
    list_filter = ("protocol", "view_only")
    search_fields = ("desktop__name", "user__username", "used_from")
    readonly_fields = (
        "key_hash",
        "user",
        "desktop",
        "protocol",
        "view_only",
        "created_at",
        "expires_at",
        "used_at",
        "used_from",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


def _revoke_each(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    rows: QuerySet[Any],
    revoke: Callable[[User, Any], int],
    noun: str,
) -> None:
    """Revoke each selected row through its service (which checks the actor may), saying
    which ones could not be and how many were."""
    revoked = 0
    for row in rows:
        try:
            revoked += revoke(cast(User, request.user), row)
        except ApplicationError as error:
            modeladmin.message_user(request, f"{row}: {error.message}", messages.ERROR)
    modeladmin.message_user(request, f"Revoked {revoked} {noun}.", messages.SUCCESS)


@admin.action(description="Revoke the selected gateway credentials (no new tunnels)")
def revoke_gateway_credentials(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[GatewayCredential]
) -> None:
    _revoke_each(
        modeladmin,
        request,
        queryset.select_related("desktop", "user"),
        lambda actor, row: gateway_credential_revoke(actor=actor, credential=row),
        "gateway credentials",
    )


@admin.register(GatewayCredential)
class GatewayCredentialAdmin(ScopedModelAdmin):
    """The credentials `.vv` files carry for the SPICE gateway: whose, for which desktop,
    until when, last used; revoking one stops new tunnels with it."""

    manager_access: ClassVar[ManagerAccess] = "act"
    teacher_access: ClassVar[ManagerAccess] = "act"
    actions = (revoke_gateway_credentials,)

    def scope_queryset(self, actor: User, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(desktop__in=desktops_visible_to(actor))

    list_display = ("desktop", "user", "created_at", "expires_at", "last_used_at", "revoked")
    list_filter = ("revoked",)
    search_fields = ("desktop__name", "user__username", "public_id")
    readonly_fields = (
        "public_id",
        "key_hash",
        "user",
        "desktop",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.action(description="Revoke the selected direct links")
def revoke_direct_links(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[DirectLink]
) -> None:
    _revoke_each(
        modeladmin,
        request,
        queryset.select_related("desktop", "created_by"),
        lambda actor, row: direct_link_revoke(actor=actor, link=row),
        "direct links",
    )


@admin.register(DirectLink)
class DirectLinkAdmin(ScopedModelAdmin):
    """Links that open a desktop's viewer without signing in: who made each, until when,
    how often it was used; revoking one stops it opening anything."""

    manager_access: ClassVar[ManagerAccess] = "act"
    teacher_access: ClassVar[ManagerAccess] = "act"
    actions = (revoke_direct_links,)

    def scope_queryset(self, actor: User, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(desktop__in=desktops_visible_to(actor))

    list_display = (
        "id",
        "desktop",
        "created_by",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
        "uses",
    )
    list_filter = (("revoked_at", admin.EmptyFieldListFilter), "expires_at")
    search_fields = ("desktop__name", "desktop__owner__username", "created_by__username")
    readonly_fields = (
        "key_hash",
        "desktop",
        "created_by",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
        "uses",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(DesktopEvent)
class DesktopEventAdmin(ScopedModelAdmin):
    """The event log: every status change and notable action of every desktop, newest
    first, to answer "what happened to this class's desktops this morning". Read-only: an
    audit that could be edited would prove nothing."""

    manager_access: ClassVar[ManagerAccess] = "read"
    list_display = (
        "created_at",
        "desktop",
        "owner",
        "course",
        "from_status",
        "to_status",
        "reason",
        "actor",
    )
    list_filter = (
        "to_status",
        ("desktop__course", admin.RelatedOnlyFieldListFilter),
        ("desktop__hypervisor", admin.RelatedOnlyFieldListFilter),
    )
    search_fields = ("desktop__name", "desktop__owner__username", "actor__username", "reason")
    date_hierarchy = "created_at"
    ordering = ("-created_at", "-pk")
    list_select_related = ("desktop__owner", "desktop__course", "actor")
    readonly_fields = ("created_at", "desktop", "from_status", "to_status", "reason", "actor")

    def scope_queryset(self, actor: User, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(desktop__in=desktops_visible_to(actor))

    @admin.display(description="owner", ordering="desktop__owner__username")
    def owner(self, event: DesktopEvent) -> str:
        return event.desktop.owner.get_username()

    @admin.display(description="course", ordering="desktop__course__name")
    def course(self, event: DesktopEvent) -> str:
        return event.desktop.course.name if event.desktop.course else "-"

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
