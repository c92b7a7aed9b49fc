"""Templates (their tree, sharing, dependants, the recycle bin), hardware profiles, media.

Thin: checks input, finds the object among those the caller may see (others are 404),
and calls one service in `templates_app.services`.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api.views import request_user
from accounts.models import User
from isard.core.errors import PermissionDeniedError
from templates_app.api.serializers import (
    HardwareProfileSerializer,
    MediaSerializer,
    TemplateDependantsSerializer,
    TemplateSerializer,
    TemplateSharingReadSerializer,
    TemplateSharingSerializer,
    TemplateTreeSerializer,
)
from templates_app.models import HardwareProfile, Media, Template
from templates_app.permissions import can_manage_template, templates_managed_by
from templates_app.selectors import template_dependants, templates_visible_to
from templates_app.services.templates import template_delete, template_restore, template_set_sharing


def templates_listed_for(user: User) -> QuerySet[Template]:
    """Templates one may use, plus those one manages (creating, failed, in the bin)."""
    visible = templates_visible_to(user).values("pk")
    managed = templates_managed_by(user).values("pk")
    return Template.objects.filter(Q(pk__in=visible) | Q(pk__in=managed))


def media_listed_for(user: User) -> QuerySet[Media]:
    """Install media a teacher may use: the shared ones (no owner) and their own."""
    if user.is_admin:
        return Media.objects.all()
    if not user.is_teacher:
        return Media.objects.none()
    return Media.objects.filter(Q(owner__isnull=True) | Q(owner=user))


@extend_schema(tags=["templates"])
class TemplateViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Templates you may use or manage."""

    serializer_class = TemplateSerializer
    lookup_value_regex = "[0-9]+"
    filterset_fields = ["status", "owner", "parent", "shared_with_everyone"]
    ordering_fields = ["name", "created_at", "id"]
    ordering = ["name", "id"]
    search_fields = ["name", "description"]

    def get_queryset(self) -> QuerySet[Template]:
        if getattr(self, "swagger_fake_view", False):
            return Template.objects.none()
        return templates_listed_for(request_user(self.request)).select_related("owner")

    def get_serializer_context(self) -> dict[str, Any]:
        context = super().get_serializer_context()
        if not getattr(self, "swagger_fake_view", False) and self.request:
            managed = templates_managed_by(request_user(self.request))
            context["managed_template_ids"] = set(managed.values_list("pk", flat=True))
        return context

    def _managed(self) -> Template:
        template = self.get_object()
        if not can_manage_template(request_user(self.request), template):
            raise PermissionDeniedError("This template is not yours.")
        return template

    def _answer(self, template: Template, code: int = status.HTTP_200_OK) -> Response:
        template.refresh_from_db()
        return Response(self.get_serializer(template).data, status=code)

    @extend_schema(responses={200: TemplateSerializer})
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Move the template to the recycle bin (refused while anything is built on it)."""
        template = template_delete(actor=request_user(request), template=self._managed())
        return self._answer(template)

    @extend_schema(request=None, responses={200: TemplateSerializer})
    @action(detail=True, methods=["post"])
    def restore(self, request: Request, pk: str | None = None) -> Response:
        """Take the template out of the recycle bin."""
        template = template_restore(actor=request_user(request), template=self._managed())
        return self._answer(template)

    @extend_schema(responses={200: TemplateTreeSerializer}, filters=False)
    @action(detail=True, methods=["get"])
    def tree(self, request: Request, pk: str | None = None) -> Response:
        """Where the template sits: its ancestors (root first) and its children."""
        template = self.get_object()
        ancestors: list[dict[str, Any]] = []
        parent = template.parent
        seen: set[int] = set()
        while parent is not None and parent.pk not in seen:
            seen.add(parent.pk)
            ancestors.insert(0, {"id": parent.pk, "name": parent.name})
            parent = parent.parent
        children = (
            self.get_queryset().filter(parent=template).order_by("name", "pk").values("id", "name")
        )
        return Response(
            TemplateTreeSerializer({"ancestors": ancestors, "children": list(children)}).data
        )

    @extend_schema(responses={200: TemplateDependantsSerializer}, filters=False)
    @action(detail=True, methods=["get"])
    def dependants(self, request: Request, pk: str | None = None) -> Response:
        """What keeps the template from being deleted (for those who manage it)."""
        template = self._managed()
        return Response(TemplateDependantsSerializer(template_dependants(template)).data)

    @extend_schema(methods=["GET"], responses={200: TemplateSharingReadSerializer}, filters=False)
    @extend_schema(
        methods=["PUT"],
        request=TemplateSharingSerializer,
        responses={200: TemplateSharingReadSerializer},
    )
    @action(detail=True, methods=["get", "put"])
    def sharing(self, request: Request, pk: str | None = None) -> Response:
        """Who may create desktops from the template: everyone, courses, people."""
        template = self._managed()
        if request.method == "PUT":
            serializer = TemplateSharingSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            data = serializer.validated_data
            template = template_set_sharing(
                actor=request_user(request),
                template=template,
                everyone=data.get("shared_with_everyone"),
                courses=data.get("shared_courses"),
                users=data.get("shared_users"),
            )
        return Response(TemplateSharingReadSerializer(template).data)


@extend_schema(tags=["templates"])
class HardwareProfileViewSet(viewsets.ReadOnlyModelViewSet):
    """The virtual hardware a desktop can have."""

    serializer_class = HardwareProfileSerializer
    queryset = HardwareProfile.objects.all()
    lookup_value_regex = "[0-9]+"
    filterset_fields: list[str] = []
    ordering_fields = ["name", "memory_mib", "vcpus"]
    ordering = ["name", "id"]
    search_fields = ["name"]


@extend_schema(tags=["templates"])
class MediaViewSet(viewsets.ReadOnlyModelViewSet):
    """Install media (ISO images): the shared ones and your own; teachers only."""

    serializer_class = MediaSerializer
    lookup_value_regex = "[0-9]+"
    filterset_fields = ["status", "kind"]
    ordering_fields = ["name", "created_at", "size_bytes"]
    ordering = ["name", "id"]
    search_fields = ["name"]

    def get_queryset(self) -> QuerySet[Media]:
        if getattr(self, "swagger_fake_view", False):
            return Media.objects.none()
        return media_listed_for(request_user(self.request))
