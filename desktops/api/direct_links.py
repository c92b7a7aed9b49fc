"""Direct links in the API: make them (for a desktop, or a deployment's every desktop),
list them, revoke them. Thin: the rules are in `desktops.viewer.direct_links`."""

from __future__ import annotations

from typing import Any

import django_filters  # type: ignore[import-untyped]
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api.views import request_user
from desktops.api.serializers import DirectLinkSerializer
from desktops.models import DirectLink
from desktops.viewer.direct_links import (
    DirectLinkRow,
    IssuedDirectLink,
    direct_link_revoke,
    direct_links_visible_to,
)
from isard.core.api.filters import FilterSet
from isard.core.api.serializers import MAX_ID


def issued_body(request: Request, issued: IssuedDirectLink) -> dict[str, Any]:
    link = issued.link
    return {
        "id": link.pk,
        "desktop": link.desktop_id,
        "username": link.desktop.owner.get_username(),
        "desktop_name": link.desktop.name,
        "url": request.build_absolute_uri(issued.path),
        "expires_at": link.expires_at,
    }


def row_body(request: Request, row: DirectLinkRow) -> dict[str, Any]:
    return {
        "id": row.link_id,
        "desktop": row.desktop_id,
        "username": row.username,
        "desktop_name": row.desktop_name,
        "url": request.build_absolute_uri(row.path),
        "expires_at": row.expires_at,
    }


class DirectLinkFilter(FilterSet):
    deployment = django_filters.NumberFilter(
        field_name="desktop__deployment", min_value=1, max_value=MAX_ID
    )

    class Meta:
        model = DirectLink
        fields = ["desktop", "created_by"]


@extend_schema(tags=["direct links"])
class DirectLinkViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Links that open a desktop's browser viewer without signing in, of the desktops you
    manage (a student sees none). Make them on a desktop or a deployment."""

    serializer_class = DirectLinkSerializer
    lookup_value_regex = "[0-9]+"
    filterset_class = DirectLinkFilter
    ordering_fields = ["created_at", "expires_at", "id"]
    ordering = ["-created_at", "-id"]

    def get_queryset(self) -> QuerySet[DirectLink]:
        if getattr(self, "swagger_fake_view", False):
            return DirectLink.objects.none()
        return direct_links_visible_to(request_user(self.request))

    @extend_schema(request=None, responses={200: DirectLinkSerializer})
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str | None = None) -> Response:
        """Stop the link opening anything (revoking it again changes nothing)."""
        link = self.get_object()
        direct_link_revoke(actor=request_user(request), link=link)
        return Response(DirectLinkSerializer(link).data)
