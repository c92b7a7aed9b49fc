"""Desktops (create, act, recycle bin, viewers, events) and deployments.

Thin: each view finds the object among those the caller may see (others are 404),
checks input with a serializer and calls one service; the service checks its `actor`
again. Long operations answer 202 Accepted with the resource and its current status;
the websocket (`/ws/desktops/`) or polling the resource tells the rest.
"""

from __future__ import annotations

import json
from typing import Any

import django_filters  # type: ignore[import-untyped]
from django.db.models import QuerySet
from django.http import HttpResponse
from django.http.request import split_domain_port
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle

from accounts.api.views import request_user
from accounts.models import Course, User
from accounts.permissions import courses_visible_to, sees_own_desktops_only, users_visible_to
from desktops.api.direct_links import issued_body, row_body
from desktops.api.serializers import (
    DeploymentCoTeachersSerializer,
    DeploymentCreateSerializer,
    DeploymentOutcomeSerializer,
    DeploymentRecreateSerializer,
    DeploymentSerializer,
    DeploymentStopSerializer,
    DeploymentUpdateSerializer,
    DesktopCreateSerializer,
    DesktopEventSerializer,
    DesktopSerializer,
    DirectLinkBatchSerializer,
    DirectLinkCreateSerializer,
    DirectLinkIssuedSerializer,
    DirectLinksRevokedSerializer,
    EarlierDiskSerializer,
    PutBackSerializer,
    ViewerAccessSerializer,
)
from desktops.choices import DesktopStatus
from desktops.models import Deployment, Desktop, DesktopEvent, EarlierDisk
from desktops.permissions import desktops_visible_to
from desktops.services.deployments import (
    BulkOutcome,
    deployment_create,
    deployment_create_missing,
    deployment_delete,
    deployment_desktops,
    deployment_recreate,
    deployment_set_co_teachers,
    deployment_set_visible,
    deployment_start,
    deployment_stop,
    deployment_update,
    deployments_visible_to,
    desktops_hidden_from,
)
from desktops.services.lifecycle import desktop_reset, desktop_shutdown, desktop_start, desktop_stop
from desktops.services.provisioning import desktop_create, desktop_create_from_media
from desktops.services.recycle_bin import desktop_delete, desktop_restore
from desktops.services.renewal import desktop_put_back, desktop_reset_to_template
from desktops.services.time_limits import desktop_extend
from desktops.viewer import services as viewers
from desktops.viewer.direct_links import (
    direct_link_create,
    direct_links_create_for_deployment,
    direct_links_revoke_for_deployment,
)
from desktops.viewer.files import viewer_vv_build
from isard.core.api.filters import BooleanFilter, FilterSet
from isard.core.api.serializers import ErrorSerializer
from isard.core.api.throttling import DesktopActionThrottle
from isard.core.errors import ApplicationError, NotFoundError
from templates_app.api.views import media_listed_for
from templates_app.models import HardwareProfile, Template
from templates_app.selectors import templates_visible_to

#: Actions that make a hypervisor or a worker do something: rate-limited per person.
THROTTLED_ACTIONS = frozenset(
    {
        "create",
        "destroy",
        "restore",
        "start",
        "stop",
        "shutdown",
        "reset",
        "reset_to_template",
        "put_back",
        "extend",
        "viewer",
        "vv",
    }
)


class DesktopFilter(FilterSet):
    status = django_filters.MultipleChoiceFilter(choices=DesktopStatus.choices)
    in_recycle_bin = BooleanFilter(method="filter_in_recycle_bin", label="In the recycle bin")

    class Meta:
        model = Desktop
        fields = ["status", "course", "template", "owner", "deployment"]

    def filter_in_recycle_bin(
        self, queryset: QuerySet[Desktop], name: str, value: bool | None
    ) -> QuerySet[Desktop]:
        if value is None:
            return queryset
        deleted = queryset.filter(status=DesktopStatus.DELETED)
        return deleted if value else queryset.exclude(status=DesktopStatus.DELETED)


class VvRenderer(BaseRenderer):
    """Lets a client ask for the `.vv` file by its media type; errors stay JSON."""

    media_type = "application/x-virt-viewer"
    format = "vv"
    charset = "utf-8"

    def render(
        self, data: Any, accepted_media_type: Any = None, renderer_context: Any = None
    ) -> Any:
        if isinstance(data, str):
            return data.encode()
        return json.dumps(data).encode()


def desktops_listed_for(user: User) -> QuerySet[Desktop]:
    """Desktops the person may see, less their own that a hidden deployment keeps away."""
    visible = desktops_visible_to(user)
    if sees_own_desktops_only(user):
        # A student's visible desktops leave out every one of a hidden deployment
        # already: the subquery below would change nothing and cost every poll of their
        # list (the most frequent request there is) the building of two nested queries.
        return visible
    hidden = desktops_hidden_from(user).values("pk")
    return visible.exclude(pk__in=hidden)


@extend_schema(tags=["desktops"])
class DesktopViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Your desktops, and those of the courses you teach or the school you manage."""

    serializer_class = DesktopSerializer
    lookup_value_regex = "[0-9]+"
    filterset_class = DesktopFilter
    ordering_fields = ["name", "created_at", "status", "status_changed_at", "id"]
    ordering = ["name", "id"]
    search_fields = ["name", "description"]

    def get_queryset(self) -> QuerySet[Desktop]:
        if getattr(self, "swagger_fake_view", False):
            return Desktop.objects.none()
        user = request_user(self.request)
        listed = desktops_listed_for(user)
        if sees_own_desktops_only(user):
            return listed  # their own: each desktop's owner is known without a join
        return listed.select_related("owner")

    def get_throttles(self) -> list[BaseThrottle]:
        throttles = list(super().get_throttles())
        if self.action in THROTTLED_ACTIONS:
            throttles.append(DesktopActionThrottle())
        return throttles

    def _answer(self, desktop: Desktop, code: int = status.HTTP_202_ACCEPTED) -> Response:
        desktop.refresh_from_db()
        return Response(DesktopSerializer(desktop).data, status=code)

    @extend_schema(request=DesktopCreateSerializer, responses={202: DesktopSerializer})
    def create(self, request: Request) -> Response:
        """Create a desktop from a template shared with you (or from install media).

        Its disk and domain are made by a task: the answer is the desktop, "creating".
        """
        serializer = DesktopCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        actor = request_user(request)
        if data["media"] is not None:
            media = media_listed_for(actor).filter(pk=data["media"]).first()
            hardware = HardwareProfile.objects.filter(pk=data["hardware"]).first()
            if media is None or hardware is None:
                raise NotFoundError("No such media or hardware profile.")
            desktop = desktop_create_from_media(
                actor=actor, media=media, hardware=hardware, name=data["name"]
            )
            return self._answer(desktop)
        template = templates_visible_to(actor).filter(pk=data["template"]).first()
        if template is None:
            raise NotFoundError("No such template.", extra={"template": data["template"]})
        desktop = desktop_create(
            actor=actor, template=template, name=data["name"], description=data["description"]
        )
        return self._answer(desktop)

    @extend_schema(responses={202: DesktopSerializer})
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Move the desktop to the recycle bin (stop it first); its disk is kept."""
        desktop = desktop_delete(actor=request_user(request), desktop=self.get_object())
        return self._answer(desktop)

    @extend_schema(request=None, responses={200: DesktopSerializer})
    @action(detail=True, methods=["post"])
    def restore(self, request: Request, pk: str | None = None) -> Response:
        """Take the desktop out of the recycle bin, its disk exactly as it was."""
        desktop = desktop_restore(actor=request_user(request), desktop=self.get_object())
        return self._answer(desktop, status.HTTP_200_OK)

    @extend_schema(request=None, responses={202: DesktopSerializer})
    @action(detail=True, methods=["post"])
    def start(self, request: Request, pk: str | None = None) -> Response:
        """Start the desktop (starting one already starting or started changes nothing)."""
        desktop = desktop_start(actor=request_user(request), desktop=self.get_object())
        return self._answer(desktop)

    @extend_schema(request=None, responses={202: DesktopSerializer})
    @action(detail=True, methods=["post"])
    def shutdown(self, request: Request, pk: str | None = None) -> Response:
        """Ask the guest to power off (ACPI); it is forced off after a timeout."""
        desktop = desktop_shutdown(actor=request_user(request), desktop=self.get_object())
        return self._answer(desktop)

    @extend_schema(request=None, responses={202: DesktopSerializer})
    @action(detail=True, methods=["post"])
    def stop(self, request: Request, pk: str | None = None) -> Response:
        """Force the desktop off at once (pulling the plug)."""
        desktop = desktop_stop(actor=request_user(request), desktop=self.get_object())
        return self._answer(desktop)

    @extend_schema(request=None, responses={202: DesktopSerializer})
    @action(detail=True, methods=["post"])
    def reset(self, request: Request, pk: str | None = None) -> Response:
        """Hard-reset the running guest (the reset button)."""
        desktop = desktop_reset(actor=request_user(request), desktop=self.get_object())
        return self._answer(desktop)

    @extend_schema(request=None, responses={202: DesktopSerializer})
    @action(detail=True, methods=["post"], url_path="reset-to-template")
    def reset_to_template(self, request: Request, pk: str | None = None) -> Response:
        """Give the stopped desktop a fresh disk on its template; the disk it had goes to
        the recycle bin (`earlier_disks`, `put-back`). A student may reset their own
        desktop when their course allows it (403 otherwise)."""
        actor = request_user(request)
        desktop = desktop_reset_to_template(actor=actor, desktop=self.get_object())
        return self._answer(desktop)

    @extend_schema(request=None, responses={200: DesktopSerializer})
    @action(detail=True, methods=["post"])
    def extend(self, request: Request, pk: str | None = None) -> Response:
        """More time for the running session, as often as its course allows (409 when no
        extension is left or there is no time limit)."""
        desktop = desktop_extend(actor=request_user(request), desktop=self.get_object())
        return self._answer(desktop, status.HTTP_200_OK)

    @extend_schema(responses={200: EarlierDiskSerializer(many=True)}, filters=False)
    @action(detail=True, methods=["get"], url_path="earlier-disks")
    def earlier_disks(self, request: Request, pk: str | None = None) -> Response:
        """The disks resets put aside, newest first; each can be put back until purged."""
        earlier = EarlierDisk.objects.filter(desktop=self.get_object()).select_related("disk")
        page = self.paginate_queryset(earlier.order_by("-put_aside_at", "-pk"))
        assert page is not None  # the API always paginates
        return self.get_paginated_response(EarlierDiskSerializer(page, many=True).data)

    @extend_schema(request=PutBackSerializer, responses={202: DesktopSerializer})
    @action(detail=True, methods=["post"], url_path="put-back")
    def put_back(self, request: Request, pk: str | None = None) -> Response:
        """Put an earlier disk back (the desktop stopped); the current one goes to the bin."""
        serializer = PutBackSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        desktop = desktop_put_back(
            actor=request_user(request),
            desktop=self.get_object(),
            earlier_id=serializer.validated_data["earlier_disk"],
        )
        return self._answer(desktop)

    @extend_schema(responses={200: DesktopEventSerializer(many=True)}, filters=False)
    @action(detail=True, methods=["get"])
    def events(self, request: Request, pk: str | None = None) -> Response:
        """What happened to the desktop, oldest first: status changes and notable actions."""
        desktop = self.get_object()
        events = DesktopEvent.objects.filter(desktop=desktop).select_related("actor")
        events = events.order_by("created_at", "pk")
        page = self.paginate_queryset(events)
        assert page is not None  # the API always paginates
        return self.get_paginated_response(DesktopEventSerializer(page, many=True).data)

    @extend_schema(request=None, responses={200: ViewerAccessSerializer})
    @action(detail=True, methods=["post"])
    def viewer(self, request: Request, pk: str | None = None) -> Response:
        """A single-use token for the browser viewer (owner only).

        The proxy signs in to the desktop's display itself, so no password is handed out:
        a noVNC client connects to `path` with no password.
        """
        access = viewers.viewer_token_issue(actor=request_user(request), desktop=self.get_object())
        body = {
            "desktop": access.desktop_id,
            "name": access.desktop_name,
            "path": access.websocket_path,
            "expires_at": access.expires_at,
        }
        response = Response(ViewerAccessSerializer(body).data)
        response["Cache-Control"] = "no-store"
        return response

    @extend_schema(
        responses={
            (200, "application/x-virt-viewer"): OpenApiResponse(
                OpenApiTypes.STR, description="A .vv file for remote-viewer (SPICE over TLS)."
            ),
            409: OpenApiResponse(ErrorSerializer, description="Not running, or no SPICE TLS."),
            502: OpenApiResponse(ErrorSerializer, description="Its hypervisor did not answer."),
        },
        filters=False,
    )
    @action(
        detail=True,
        methods=["get"],
        url_path="viewer.vv",
        renderer_classes=[JSONRenderer, VvRenderer],
    )
    def vv(self, request: Request, pk: str | None = None) -> HttpResponse:
        """Download a `.vv` file that opens the running desktop in remote-viewer (owner only)."""
        public_host, _ = split_domain_port(request.get_host())
        vv = viewer_vv_build(
            actor=request_user(request), desktop=self.get_object(), public_host=public_host
        )
        response = HttpResponse(vv.content, content_type="application/x-virt-viewer")
        response["Content-Disposition"] = f'attachment; filename="{vv.filename}"'
        response["Cache-Control"] = "no-store"
        return response

    @extend_schema(request=DirectLinkCreateSerializer, responses={201: DirectLinkIssuedSerializer})
    @action(detail=True, methods=["post"], url_path="direct-links")
    def direct_links(self, request: Request, pk: str | None = None) -> Response:
        """A link that opens this desktop's viewer without signing in (and starts it if it
        is stopped), for `hours`; its `url` is shown this once. Not for students."""
        serializer = DirectLinkCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        issued = direct_link_create(
            actor=request_user(request),
            desktop=self.get_object(),
            hours=serializer.validated_data["hours"],
        )
        response = Response(
            DirectLinkIssuedSerializer(issued_body(request, issued)).data,
            status=status.HTTP_201_CREATED,
        )
        response["Cache-Control"] = "no-store"
        return response


# --- deployments ------------------------------------------------------------------------------


def course_and_template(actor: User, data: dict[str, Any]) -> tuple[Course, Template]:
    """The course and template a create names by id, as the person sees them (else 404)."""
    course = courses_visible_to(actor).filter(pk=data["course"]).first()
    if course is None:
        raise NotFoundError("No such course.", extra={"course": data["course"]})
    template = templates_visible_to(actor).filter(pk=data["template"]).first()
    if template is None:
        raise NotFoundError("No such template.", extra={"template": data["template"]})
    return course, template


def _users(actor: User, ids: list[int]) -> list[User]:
    """The people these ids name, among those the actor may see: another school's people
    are "no such people", like free ids, and never named back."""
    found = list(users_visible_to(actor).filter(pk__in=ids))
    missing = sorted(set(ids) - {user.pk for user in found})
    if missing:
        raise ApplicationError("No such people.", extra={"users": missing})
    return found


def _outcome(outcome: BulkOutcome, code: int = status.HTTP_202_ACCEPTED) -> Response:
    outcome.deployment.refresh_from_db()
    body = {
        "deployment": outcome.deployment,
        "changed": outcome.changed,
        "refused": [{"desktop": d.pk, "message": message} for d, message in outcome.refused],
    }
    return Response(DeploymentOutcomeSerializer(body).data, status=code)


class DeploymentFilter(FilterSet):
    deleted = BooleanFilter(
        field_name="deleted_at", lookup_expr="isnull", exclude=True, label="In the recycle bin"
    )

    class Meta:
        model = Deployment
        fields = ["course", "template", "visible", "owner"]


@extend_schema(tags=["deployments"])
class DeploymentViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """A template given to a course's students, and what a teacher does to all of it."""

    serializer_class = DeploymentSerializer
    lookup_value_regex = "[0-9]+"
    filterset_class = DeploymentFilter
    ordering_fields = ["name", "created_at", "id"]
    ordering = ["-created_at", "-id"]
    search_fields = ["name", "description"]

    def get_queryset(self) -> QuerySet[Deployment]:
        if getattr(self, "swagger_fake_view", False):
            return Deployment.objects.none()
        visible = deployments_visible_to(request_user(self.request))
        return visible.select_related("owner").prefetch_related("co_teachers", "students")

    def get_throttles(self) -> list[BaseThrottle]:
        throttles = list(super().get_throttles())
        if self.request.method != "GET":
            throttles.append(DesktopActionThrottle())
        return throttles

    @extend_schema(request=DeploymentCreateSerializer, responses={202: DeploymentOutcomeSerializer})
    def create(self, request: Request) -> Response:
        """Give a template to every student of a course (or those chosen), in one request."""
        serializer = DeploymentCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        actor = request_user(request)
        course, template = course_and_template(actor, data)
        students = None if data["students"] is None else _users(actor, data["students"])
        deployment, desktops = deployment_create(
            actor=actor,
            course=course,
            template=template,
            name=data["name"],
            description=data["description"],
            students=students,
            co_teachers=_users(actor, data["co_teachers"]),
            visible=data["visible"],
            volatile=data["volatile"],
        )
        return _outcome(BulkOutcome(deployment=deployment, changed=desktops))

    @extend_schema(request=DeploymentUpdateSerializer, responses={200: DeploymentSerializer})
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        """Rename the deployment or change its description."""
        serializer = DeploymentUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        deployment = deployment_update(
            actor=request_user(request), deployment=self.get_object(), **serializer.validated_data
        )
        return Response(DeploymentSerializer(deployment).data)

    @extend_schema(responses={202: DeploymentOutcomeSerializer})
    def destroy(self, request: Request, pk: str | None = None) -> Response:
        """Move the deployment and all its desktops to the recycle bin (stop them first)."""
        outcome = deployment_delete(actor=request_user(request), deployment=self.get_object())
        return _outcome(outcome)

    @extend_schema(responses={200: DesktopSerializer(many=True)}, filters=False)
    @action(detail=True, methods=["get"])
    def desktops(self, request: Request, pk: str | None = None) -> Response:
        """The deployment's current desktops, one per student."""
        desktops = deployment_desktops(self.get_object())
        page = self.paginate_queryset(desktops)
        assert page is not None
        return self.get_paginated_response(DesktopSerializer(page, many=True).data)

    @extend_schema(request=None, responses={202: DeploymentOutcomeSerializer})
    @action(detail=True, methods=["post"])
    def start(self, request: Request, pk: str | None = None) -> Response:
        """Start every stopped desktop of the deployment."""
        return _outcome(deployment_start(actor=request_user(request), deployment=self.get_object()))

    @extend_schema(request=DeploymentStopSerializer, responses={202: DeploymentOutcomeSerializer})
    @action(detail=True, methods=["post"])
    def stop(self, request: Request, pk: str | None = None) -> Response:
        """Shut down every running desktop (or force them off)."""
        serializer = DeploymentStopSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return _outcome(
            deployment_stop(
                actor=request_user(request),
                deployment=self.get_object(),
                force=serializer.validated_data["force"],
            )
        )

    @extend_schema(
        request=DeploymentRecreateSerializer, responses={202: DeploymentOutcomeSerializer}
    )
    @action(detail=True, methods=["post"])
    def recreate(self, request: Request, pk: str | None = None) -> Response:
        """Fresh desktops from the (current or a newer) template; the old ones are recycled."""
        serializer = DeploymentRecreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        actor = request_user(request)
        deployment = self.get_object()
        template = None
        if data["template"] is not None:
            template = templates_visible_to(actor).filter(pk=data["template"]).first()
            if template is None:
                raise NotFoundError("No such template.", extra={"template": data["template"]})
        chosen = None
        if data["desktops"] is not None:
            chosen = list(Desktop.objects.filter(pk__in=data["desktops"], deployment=deployment))
            if len(chosen) != len(set(data["desktops"])):
                raise NotFoundError("Some of those desktops are not in this deployment.")
        return _outcome(
            deployment_recreate(
                actor=actor, deployment=deployment, desktops=chosen, template=template
            )
        )

    @extend_schema(request=None, responses={202: DeploymentOutcomeSerializer})
    @action(detail=True, methods=["post"], url_path="create-missing")
    def create_missing(self, request: Request, pk: str | None = None) -> Response:
        """Desktops for the students who joined the course since."""
        return _outcome(
            deployment_create_missing(actor=request_user(request), deployment=self.get_object())
        )

    @extend_schema(request=None, responses={202: DeploymentOutcomeSerializer})
    @action(detail=True, methods=["post"])
    def hide(self, request: Request, pk: str | None = None) -> Response:
        """Hide the desktops from their students, and shut them down."""
        return _outcome(
            deployment_set_visible(
                actor=request_user(request), deployment=self.get_object(), visible=False
            )
        )

    @extend_schema(request=None, responses={200: DeploymentOutcomeSerializer})
    @action(detail=True, methods=["post"])
    def show(self, request: Request, pk: str | None = None) -> Response:
        """Show the desktops to their students again."""
        outcome = deployment_set_visible(
            actor=request_user(request), deployment=self.get_object(), visible=True
        )
        return _outcome(outcome, status.HTTP_200_OK)

    @extend_schema(request=DirectLinkCreateSerializer, responses={201: DirectLinkBatchSerializer})
    @action(detail=True, methods=["post"], url_path="direct-links")
    def direct_links(self, request: Request, pk: str | None = None) -> Response:
        """A new direct link for every current desktop of the deployment, one row per
        student (the page's CSV); the URLs are shown this once."""
        serializer = DirectLinkCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        rows = direct_links_create_for_deployment(
            actor=request_user(request),
            deployment=self.get_object(),
            hours=serializer.validated_data["hours"],
        )
        body = {"links": [row_body(request, row) for row in rows]}
        response = Response(DirectLinkBatchSerializer(body).data, status=status.HTTP_201_CREATED)
        response["Cache-Control"] = "no-store"
        return response

    @extend_schema(request=None, responses={200: DirectLinksRevokedSerializer})
    @action(detail=True, methods=["post"], url_path="revoke-direct-links")
    def revoke_direct_links(self, request: Request, pk: str | None = None) -> Response:
        """Revoke every live direct link to the deployment's desktops."""
        revoked = direct_links_revoke_for_deployment(
            actor=request_user(request), deployment=self.get_object()
        )
        return Response(DirectLinksRevokedSerializer({"revoked": revoked}).data)

    @extend_schema(request=DeploymentCoTeachersSerializer, responses={200: DeploymentSerializer})
    @action(detail=True, methods=["put"], url_path="co-teachers")
    def co_teachers(self, request: Request, pk: str | None = None) -> Response:
        """Replace the co-teachers (teachers of the course who may act on it too)."""
        serializer = DeploymentCoTeachersSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        actor = request_user(request)
        deployment = deployment_set_co_teachers(
            actor=actor,
            deployment=self.get_object(),
            co_teachers=_users(actor, serializer.validated_data["co_teachers"]),
        )
        deployment.refresh_from_db()
        return Response(DeploymentSerializer(deployment).data)
