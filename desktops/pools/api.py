"""Pools in the API: teachers make and size them, students take a desktop from one.
Thin: the rules are in `desktops.pools.services`."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api.views import request_user
from desktops.api.serializers import DesktopSerializer
from desktops.api.views import course_and_template
from desktops.choices import DesktopStatus
from desktops.models import Pool
from desktops.pools.selectors import pool_counts, pools_visible_to
from desktops.pools.services import MAX_SIZE, pool_create, pool_delete, pool_resize, pool_take
from isard.core.api.serializers import id_field
from isard.core.text import validate_name


class PoolCountsSerializer(serializers.Serializer[Any]):
    started = serializers.IntegerField(help_text="Free and running: handed out at once.")
    ready = serializers.IntegerField(help_text="Free and defined: handed out, then started.")
    making = serializers.IntegerField(help_text="Free, being created or started.")
    taken = serializers.IntegerField(help_text="Students' now.")


class PoolSerializer(serializers.ModelSerializer[Pool]):
    counts = serializers.SerializerMethodField()

    class Meta:
        model = Pool
        fields = [
            "id",
            "name",
            "course",
            "template",
            "owner",
            "started",
            "spare",
            "volatile",
            "problem",
            "counts",
            "created_at",
            "deleted_at",
        ]
        read_only_fields = fields

    @extend_schema_field(PoolCountsSerializer)
    def get_counts(self, pool: Pool) -> dict[str, int]:
        counts = pool_counts(pool)
        return {
            "started": counts.started,
            "ready": counts.ready,
            "making": counts.making,
            "taken": counts.taken,
        }


class PoolSizesSerializer(serializers.Serializer[Any]):
    started = serializers.IntegerField(min_value=0, max_value=MAX_SIZE)
    spare = serializers.IntegerField(min_value=0, max_value=MAX_SIZE)


class PoolCreateSerializer(PoolSizesSerializer):
    name = serializers.CharField(validators=[validate_name], max_length=200)
    course = id_field()
    template = id_field()
    volatile = serializers.BooleanField(
        required=False,
        default=False,
        help_text="A taken desktop goes back to the template and the pool when it stops.",
    )


@extend_schema(tags=["pools"])
class PoolViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Desktops of a course kept ready: its students take one at once (`take`); its
    teachers make the pool and set how many are kept running and defined."""

    serializer_class = PoolSerializer
    lookup_value_regex = "[0-9]+"
    filterset_fields = ["course", "template"]
    ordering_fields = ["name", "created_at", "id"]
    ordering = ["name", "id"]

    def get_queryset(self) -> QuerySet[Pool]:
        if getattr(self, "swagger_fake_view", False):
            return Pool.objects.none()
        return pools_visible_to(request_user(self.request)).select_related("template__hardware")

    @extend_schema(request=PoolCreateSerializer, responses={201: PoolSerializer})
    def create(self, request: Request) -> Response:
        """Make a pool for a course you teach; it fills in the background."""
        serializer = PoolCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        actor = request_user(request)
        course, template = course_and_template(actor, data)
        pool = pool_create(
            actor=actor,
            course=course,
            template=template,
            name=data["name"],
            started=data["started"],
            spare=data["spare"],
            volatile=data["volatile"],
        )
        return Response(PoolSerializer(pool).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={202: PoolSerializer})
    def destroy(self, request: Request, pk: str | None = None) -> Response:
        """Delete the pool (its teachers): its free desktops go (running ones forced off,
        then to the recycle bin); students keep the desktops they took."""
        pool = pool_delete(actor=request_user(request), pool=self.get_object())
        return Response(PoolSerializer(pool).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=PoolSizesSerializer, responses={200: PoolSerializer})
    @action(detail=True, methods=["put"])
    def sizes(self, request: Request, pk: str | None = None) -> Response:
        """How many free desktops to keep running (`started`) and defined (`spare`)."""
        serializer = PoolSizesSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        pool = pool_resize(
            actor=request_user(request),
            pool=self.get_object(),
            started=serializer.validated_data["started"],
            spare=serializer.validated_data["spare"],
        )
        return Response(PoolSerializer(pool).data)

    @extend_schema(request=None, responses={200: DesktopSerializer, 202: DesktopSerializer})
    @action(detail=True, methods=["post"])
    def take(self, request: Request, pk: str | None = None) -> Response:
        """A desktop of the pool for you, a student of its course, at once: 200 running,
        202 starting; the same desktop if you hold one. 409 when none is free."""
        desktop = pool_take(actor=request_user(request), pool=self.get_object())
        code = status.HTTP_200_OK if desktop.status == DesktopStatus.STARTED else 202
        return Response(DesktopSerializer(desktop).data, status=code)
