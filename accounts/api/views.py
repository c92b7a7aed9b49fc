"""Sign in for a token, the caller's own tokens, who they are, and their courses.

Thin: each view checks input with a serializer and calls one service or selector. What a
person may see comes from `accounts.permissions`.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import authenticate, logout
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer
from rest_framework.views import APIView

from accounts.api.authentication import ApiTokenAuthentication
from accounts.api.serializers import (
    ApiTokenSerializer,
    CourseSerializer,
    CourseSettingsSerializer,
    LoginResponseSerializer,
    LoginSerializer,
    MemberSerializer,
    MeSerializer,
    QuotaSerializer,
    UsageLineSerializer,
)
from accounts.ldap.backend import (
    DIRECTORY_UNREACHABLE_MESSAGE,
    DirectoryUnavailableError,
    directory_unreachable,
)
from accounts.models import ApiToken, Course, CourseMembership, Quota, User
from accounts.permissions import (
    can_manage_course,
    courses_taught_by,
    courses_visible_to,
    quotas_managed_by,
    users_visible_to,
)
from accounts.quotas import quota_report
from accounts.rate_limits import sign_in_attempt_start, sign_in_name
from accounts.services.courses import course_update_settings
from accounts.tokens import api_token_create, api_token_revoke
from isard.core.api.parameters import id_parameter, query_id
from isard.core.api.throttling import LoginRateThrottle
from isard.core.errors import PermissionDeniedError
from isard.core.rate_limits import client_address


def request_user(request: Request) -> User:
    """The signed-in person (every view but login requires one)."""
    user = request.user
    if not isinstance(user, User):
        raise exceptions.NotAuthenticated()
    return user


class LoginView(APIView):
    """Exchange a username and password (local or LDAP) for an API token."""

    # Only token authentication: a login never needs the CSRF token of a session, and a
    # failed one answers 401 with WWW-Authenticate.
    authentication_classes = [ApiTokenAuthentication]
    permission_classes = [AllowAny]
    throttle_classes = [LoginRateThrottle]

    @extend_schema(
        request=LoginSerializer,
        responses={201: LoginResponseSerializer},
        auth=[],
        tags=["auth"],
    )
    def post(self, request: Request) -> Response:
        serializer = LoginSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        # The same windows as the sign-in page: failures per username (from any address)
        # and per address, whichever way they come in; refused before any password check.
        username = sign_in_name(data["username"])
        attempt = sign_in_attempt_start(username=username, address=client_address(request._request))
        user = authenticate(request._request, username=username, password=data["password"])
        if not isinstance(user, User) or not user.is_active:
            if directory_unreachable(request._request):
                raise DirectoryUnavailableError(DIRECTORY_UNREACHABLE_MESSAGE)
            raise exceptions.AuthenticationFailed("Wrong username or password.")
        attempt.succeeded()
        token, key = api_token_create(user=user, name=data.get("token_name", ""))
        body = {"token": key, "token_info": token, "user": user}
        return Response(LoginResponseSerializer(body).data, status=status.HTTP_201_CREATED)


class LogoutView(APIView):
    """Sign out: revoke the token this request came with (or end the browser session)."""

    @extend_schema(request=None, responses={204: None}, tags=["auth"])
    def post(self, request: Request) -> Response:
        user = request_user(request)
        if isinstance(request.auth, ApiToken):
            api_token_revoke(actor=user, token_id=request.auth.pk)
        else:
            logout(request._request)
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(tags=["auth"])
class ApiTokenViewSet(mixins.ListModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet):
    """Your own API tokens: list them, revoke one (a lost phone)."""

    serializer_class = ApiTokenSerializer
    lookup_value_regex = "[0-9]+"
    ordering_fields = ["created_at", "last_used_at", "name"]
    search_fields = ["name"]
    filterset_fields: list[str] = []

    def get_queryset(self) -> QuerySet[ApiToken]:
        if getattr(self, "swagger_fake_view", False):
            return ApiToken.objects.none()
        return ApiToken.objects.filter(user=request_user(self.request))

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        token = self.get_object()
        api_token_revoke(actor=request_user(request), token_id=token.pk)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MeView(APIView):
    """Who you are signed in as."""

    @extend_schema(responses=MeSerializer, tags=["people"])
    def get(self, request: Request) -> Response:
        return Response(MeSerializer(request_user(request)).data)


def _usage_lines(user: User, course: Course | None) -> list[dict[str, Any]]:
    lines = quota_report([user], course=course)[user.pk]
    return [
        {
            "kind": line.kind.name,
            "title": line.kind.label,
            "in_use": line.in_use,
            "allowed": line.allowed,
            "in_use_text": line.in_use_text,
            "allowed_text": line.allowed_text,
            "set_by": line.set_by,
            "full": line.full,
        }
        for line in lines
    ]


def _course_param(request: Request, actor: User) -> Course | None:
    course_id = query_id(request, "course")
    if course_id is None:
        return None
    course = courses_visible_to(actor).filter(pk=course_id).first()
    if course is None:
        raise exceptions.NotFound("No such course.")
    return course


class MyUsageView(APIView):
    """What you use against your limits: in general, or in one course (`?course=<id>`)."""

    @extend_schema(
        parameters=[id_parameter("course", "Only this course's limits and usage.")],
        responses=UsageLineSerializer(many=True),
        tags=["people"],
    )
    def get(self, request: Request) -> Response:
        actor = request_user(request)
        lines = _usage_lines(actor, _course_param(request, actor))
        return Response(UsageLineSerializer(lines, many=True).data)


class UserUsageView(APIView):
    """A person's usage against their limits, for their teachers, school manager, admins."""

    @extend_schema(
        parameters=[id_parameter("course", "Only this course's limits and usage.")],
        responses=UsageLineSerializer(many=True),
        tags=["people"],
    )
    def get(self, request: Request, user_id: int) -> Response:
        actor = request_user(request)
        person = users_visible_to(actor).filter(pk=user_id).first()
        if person is None:
            raise exceptions.NotFound("No such person.")
        lines = _usage_lines(person, _course_param(request, actor))
        return Response(UsageLineSerializer(lines, many=True).data)


@extend_schema(tags=["people"])
class QuotaViewSet(viewsets.ReadOnlyModelViewSet):
    """Quotas you may set (admins: all; school managers: their school's). Read-only here;
    they are edited in the administration."""

    serializer_class = QuotaSerializer
    lookup_value_regex = "[0-9]+"
    ordering_fields = ["id"]
    ordering = ["id"]
    filterset_fields = ["user", "course", "school", "role"]

    def get_queryset(self) -> QuerySet[Quota]:
        if getattr(self, "swagger_fake_view", False):
            return Quota.objects.none()
        return quotas_managed_by(request_user(self.request)).select_related(
            "user", "course", "school"
        )


@extend_schema(tags=["people"])
class CourseViewSet(viewsets.ReadOnlyModelViewSet):
    """Courses you are in, teach or manage; their members for those who manage them."""

    serializer_class = CourseSerializer
    lookup_value_regex = "[0-9]+"
    ordering_fields = ["name", "id"]
    ordering = ["name", "id"]
    search_fields = ["name"]
    filterset_fields = ["school"]

    def get_queryset(self) -> QuerySet[Course]:
        if getattr(self, "swagger_fake_view", False):
            return Course.objects.none()
        return courses_visible_to(request_user(self.request)).select_related("school")

    def get_serializer_context(self) -> dict[str, Any]:
        context = super().get_serializer_context()
        if getattr(self, "swagger_fake_view", False) or not self.request:
            return context
        user = request_user(self.request)
        context["managed_course_ids"] = set(courses_taught_by(user).values_list("pk", flat=True))
        context["my_roles"] = dict(
            CourseMembership.objects.filter(user=user).values_list("course_id", "role")
        )
        return context

    def get_serializer_class(self) -> type[BaseSerializer[Any]]:
        if self.action == "members":
            return MemberSerializer
        return CourseSerializer

    @extend_schema(request=CourseSettingsSerializer, responses={200: CourseSerializer})
    @action(detail=True, methods=["patch"], url_path="settings")
    def change_settings(self, request: Request, pk: str | None = None) -> Response:
        """The course's settings (its teachers and managers): whether students may reset
        their desktops, and the time limit of a session with its warning and extensions."""
        course = self.get_object()
        actor = request_user(request)
        if not can_manage_course(actor, course):
            raise PermissionDeniedError("Only the course's teachers and managers change it.")
        serializer = CourseSettingsSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        course = course_update_settings(actor=actor, course=course, **serializer.validated_data)
        return Response(CourseSerializer(course, context=self.get_serializer_context()).data)

    @extend_schema(responses=MemberSerializer(many=True), filters=False)
    @action(detail=True, methods=["get"])
    def members(self, request: Request, pk: str | None = None) -> Response:
        """The course's teachers and students (for those who manage the course)."""
        course = self.get_object()
        if not can_manage_course(request_user(request), course):
            raise PermissionDeniedError("Only the course's teachers and managers see its members.")
        memberships = (
            CourseMembership.objects.filter(course=course)
            .select_related("user")
            .order_by("role", "user__username", "pk")
        )
        page = self.paginate_queryset(memberships)
        serializer = MemberSerializer(page if page is not None else memberships, many=True)
        if page is not None:
            return self.get_paginated_response(serializer.data)
        return Response(serializer.data)
