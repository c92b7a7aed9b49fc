"""Hypervisors: administrators register, drain and enable them; school managers read.

Thin: the services in `hypervisors.services` check the actor again.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api.views import request_user
from accounts.models import User
from accounts.permissions import is_manager
from desktops.fleet.api.serializers import (
    HypervisorDrainSerializer,
    HypervisorRegisterSerializer,
    HypervisorSerializer,
)
from desktops.fleet.drain import hypervisor_drain
from hypervisors.choices import DrainPolicy
from hypervisors.models import Hypervisor
from hypervisors.services.hosts import hypervisor_enable, hypervisor_register
from isard.core.errors import ConflictError


class FleetPermission(permissions.BasePermission):
    """Administrators read and write; school managers read; nobody else."""

    message = "Only administrators (and school managers, to read) see the hypervisors."

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if not isinstance(user, User):
            return False
        if user.is_admin:
            return True
        return request.method in permissions.SAFE_METHODS and is_manager(user)


@extend_schema(tags=["hypervisors"])
class HypervisorViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = HypervisorSerializer
    permission_classes = [permissions.IsAuthenticated, FleetPermission]
    queryset = Hypervisor.objects.all()
    lookup_value_regex = "[0-9]+"
    filterset_fields = ["mode", "state", "accelerator"]
    ordering_fields = ["name", "free_memory_mib", "cpu_load", "id"]
    ordering = ["name", "id"]
    search_fields = ["name", "uri"]

    def get_queryset(self) -> QuerySet[Hypervisor]:
        return Hypervisor.objects.all()

    @extend_schema(request=HypervisorRegisterSerializer, responses={201: HypervisorSerializer})
    def create(self, request: Request) -> Response:
        """Register a host; it is sampled and probed by the monitor from then on."""
        serializer = HypervisorRegisterSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        name = serializer.validated_data["name"].strip()
        if Hypervisor.objects.filter(name=name).exists():
            raise ConflictError(f"A hypervisor named {name} exists already.")
        hypervisor = hypervisor_register(name=name, uri=serializer.validated_data["uri"])
        return Response(HypervisorSerializer(hypervisor).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=HypervisorDrainSerializer, responses={202: HypervisorSerializer})
    @action(detail=True, methods=["post"])
    def drain(self, request: Request, pk: str | None = None) -> Response:
        """Maintenance: nothing new starts there, and its desktops move away or shut down."""
        serializer = HypervisorDrainSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        policy = serializer.validated_data["policy"]
        hypervisor = hypervisor_drain(
            actor=request_user(request),
            hypervisor=self.get_object(),
            policy=DrainPolicy(policy) if policy else None,
        )
        return Response(HypervisorSerializer(hypervisor).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={200: HypervisorSerializer})
    @action(detail=True, methods=["post"])
    def enable(self, request: Request, pk: str | None = None) -> Response:
        """Open the host to new desktops again (a drain in progress stops where it is)."""
        hypervisor = hypervisor_enable(actor=request_user(request), hypervisor=self.get_object())
        return Response(HypervisorSerializer(hypervisor).data)
