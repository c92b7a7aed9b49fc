"""The Django admin, scoped by the role policy (`accounts.permissions`).

Administrators see and change everything. A school manager sees only their school, and a
teacher only their own things: the courses they teach (members and codes), their
templates and media, the desktops of their courses and their own, the deployments they
own or co-teach. Each ModelAdmin says what a manager and a teacher may do with its model
(`manager_access`, `teacher_access`: nothing, look, run actions, or change) and which
rows are theirs (`scope_queryset`, written with `accounts.permissions`, the one policy);
the choices of every foreign key to people, courses, schools, templates, desktops and
media are narrowed the same way, so nobody can see or pick another school's (or another
teacher's) rows. Students never enter the admin, even with `is_staff`.

Django's per-model permissions are not used for these roles: the role decides, in one
place, instead of permission rows that could disagree with the services.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from django import forms
from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.db.models import Field, Model, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from accounts import permissions
from accounts.choices import Role
from accounts.forms import DirectoryAwareSignInMixin
from accounts.models import Course, School, User
from accounts.rate_limits import sign_in_attempt_start
from isard.core.errors import TooManyRequestsError
from isard.core.rate_limits import client_address

#: What a role may do with a model in the admin (see `RoleScopedMixin`).
ManagerAccess = Literal["none", "read", "act", "write"]


def request_actor(request: HttpRequest) -> User | None:
    user = request.user
    return user if isinstance(user, User) and user.is_active else None


def admin_site_has_permission(request: HttpRequest) -> bool:
    """Administrators, school managers and teachers may use the admin, with or without
    `is_staff` (the directory's role groups make managers and teachers without it); the
    role decides (`permissions.admin_role`), so a student with `is_staff` stays out."""
    actor = request_actor(request)
    return actor is not None and permissions.uses_admin(actor)


AdminLogin = Callable[..., HttpResponse]


def admin_login_limited(login: AdminLogin) -> AdminLogin:
    """The admin's login counts failed sign-ins in the same windows as the sign-in page
    and the API (`accounts.rate_limits.sign_in_attempt_start`): over the limit it answers
    429 before any password is checked."""

    @functools.wraps(login)
    def limited(request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        if request.method != "POST":
            return login(request, extra_context)
        username = request.POST.get("username", "")
        try:
            attempt = sign_in_attempt_start(username=username, address=client_address(request))
        except TooManyRequestsError as error:
            # The same page, not validated: nothing is checked while limited.
            form = IsardAdminAuthenticationForm(request, initial={"username": username})
            form.cleaned_data = {}
            form.add_error(None, error.message)
            context = {
                **admin.site.each_context(request),
                "title": "Log in",
                "form": form,
                "app_path": request.get_full_path(),
                "username": request.user.get_username(),
            }
            refusal = TemplateResponse(request, "admin/login.html", context, status=429)
            refusal["Retry-After"] = str(error.extra["retry_after"])
            return refusal
        response = login(request, extra_context)
        if request.user.is_authenticated:
            attempt.succeeded()
        return response

    return limited


class IsardAdminAuthenticationForm(DirectoryAwareSignInMixin, AdminAuthenticationForm):
    """The admin's login: for the roles that use the admin, whatever their `is_staff`."""

    def confirm_login_allowed(self, user: Any) -> None:
        if isinstance(user, User) and permissions.uses_admin(user):
            return
        raise forms.ValidationError(
            self.error_messages["invalid_login"],
            code="invalid_login",
            params={"username": self.username_field.verbose_name},
        )


#: The rows of a model a person may pick in a form, for the rooms above people.
ChoicesRule = Callable[[User], QuerySet[Any]]

_CHOICES: dict[type[Model], ChoicesRule] = {}


def choices_register(model: type[Model], rule: ChoicesRule) -> None:
    """Desktops, templates and media say which of their rows a person may pick; they sit
    above people, so they register at start-up (AppConfig.ready) instead of being
    imported here."""
    _CHOICES[model] = rule


def scoped_choices(actor: User, model: type[Model]) -> QuerySet[Any] | None:
    """The rows of `model` that `actor` may pick in a form; None: no narrowing needed."""
    if actor.is_admin:
        return None
    if model is User:
        return (
            permissions.users_visible_to(actor).exclude(role=Role.ADMIN).exclude(is_superuser=True)
        )
    if model is Course:
        return permissions.courses_visible_to(actor)
    if model is School:
        return permissions.schools_visible_to(actor)
    rule = _CHOICES.get(model)
    return rule(actor) if rule is not None else None


class RoleScopedMixin:
    """For ModelAdmin and inlines: what a manager and a teacher may do, and on which rows.

    Each role gets one of four levels per model: "none" (not shown), "read" (look),
    "act" (look and run the list's actions, which call services that check the person
    again; no form changes), "write" (look, add, change, delete, act).
    """

    manager_access: ClassVar[ManagerAccess] = "none"
    teacher_access: ClassVar[ManagerAccess] = "none"

    def scope_queryset(self, actor: User, queryset: QuerySet[Any]) -> QuerySet[Any]:
        """The rows a manager or a teacher sees (never called for administrators)."""
        return queryset.none()

    def access_for(self, actor: User | None) -> ManagerAccess | Literal["all"]:
        """The level that applies to `actor` on this model ("all" for administrators)."""
        role = permissions.admin_role(actor) if actor is not None else None
        if role == "admin":
            return "all"
        if role == "manager":
            return self.manager_access
        if role == "teacher":
            return self.teacher_access
        return "none"

    # --- rows ----------------------------------------------------------------------------

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        queryset = super().get_queryset(request)  # type: ignore[misc]
        actor = request_actor(request)
        access = self.access_for(actor)
        if access == "all":
            return queryset
        if actor is not None and access != "none":
            return self.scope_queryset(actor, queryset)
        return queryset.none()

    # --- what may be done ------------------------------------------------------------------

    def _allows(self, request: HttpRequest, write: bool, act: bool = False) -> bool:
        access = self.access_for(request_actor(request))
        if access in ("all", "write"):
            return True
        if write:
            return False
        if act:
            return access == "act"
        return access in ("read", "act")

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self._allows(request, write=False)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._allows(request, write=False)

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return self._allows(request, write=True)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._allows(request, write=True)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._allows(request, write=True)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        if not (self._allows(request, write=True) or self._allows(request, False, act=True)):
            return {}
        return super().get_actions(request)  # type: ignore[misc]

    # --- choices ---------------------------------------------------------------------------

    def formfield_for_foreignkey(
        self, db_field: Field[Any, Any], request: HttpRequest, **kwargs: Any
    ) -> forms.ModelChoiceField | None:
        actor = request_actor(request)
        if actor is not None and db_field.related_model is not None:
            choices = scoped_choices(actor, db_field.related_model)  # type: ignore[arg-type]
            if choices is not None:
                kwargs["queryset"] = choices
        return super().formfield_for_foreignkey(db_field, request, **kwargs)  # type: ignore[misc]

    def formfield_for_manytomany(
        self, db_field: Field[Any, Any], request: HttpRequest, **kwargs: Any
    ) -> forms.ModelMultipleChoiceField | None:
        actor = request_actor(request)
        if actor is not None and db_field.related_model is not None:
            choices = scoped_choices(actor, db_field.related_model)  # type: ignore[arg-type]
            if choices is not None:
                kwargs["queryset"] = choices
        return super().formfield_for_manytomany(db_field, request, **kwargs)  # type: ignore[misc]


class ScopedModelAdmin(RoleScopedMixin, admin.ModelAdmin):
    """A ModelAdmin scoped by role; set `manager_access` and `scope_queryset`."""


class ActionsOnlyAdmin(ScopedModelAdmin):
    """Read-only forms for everyone, administrators included; the list's actions are the
    way to act (they call services that check the person again), for every role that
    sees the rows. For what is made elsewhere (a course page, the API)."""

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        if not self.has_view_permission(request):
            return {}
        return admin.ModelAdmin.get_actions(self, request)


class ReadOnlyForManagersAdmin(RoleScopedMixin, admin.ModelAdmin):
    """Shared infrastructure (hypervisors, pools, profiles): managers look, admins act."""

    manager_access: ClassVar[ManagerAccess] = "read"

    def scope_queryset(self, actor: User, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset
