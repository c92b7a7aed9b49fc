"""Plain server-rendered pages: sign in and out, join a course or sign up with a code,
choose a new password. They only call services; a later issue styles them."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth import login, update_session_auth_hash
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import SetPasswordForm
from django.contrib.auth.views import LoginView, LogoutView
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from accounts.choices import CourseRole
from accounts.forms import JoinCourseForm, SignInForm, SignUpForm
from accounts.models import Course, CourseMembership, EnrolmentCode, User
from accounts.permissions import courses_taught_by
from accounts.rate_limits import Attempt, enrolment_code_attempt_start, sign_in_attempt_start
from accounts.services.enrolment import (
    course_join_with_code,
    enrolment_code_disable,
    enrolment_code_regenerate,
    format_code,
    user_signup_with_code,
)
from accounts.services.passwords import user_password_change
from isard.core.errors import ApplicationError, TooManyRequestsError
from isard.core.rate_limits import client_address


def _user(request: HttpRequest) -> User:
    assert isinstance(request.user, User)  # login_required let only signed-in people in
    return request.user


def _refused(
    request: HttpRequest, template: str, context: dict[str, Any], error: TooManyRequestsError
) -> HttpResponse:
    """The same page, unvalidated (nothing is checked while limited), with the wait."""
    response = render(request, template, {**context, "limited": error.message}, status=429)
    response["Retry-After"] = str(error.extra["retry_after"])
    return response


class SignInView(LoginView):
    """Sign in with a username and password (local or directory), and optionally a code.

    Failed sign-ins and wrong codes are limited (accounts.rate_limits): over the limit the
    page answers 429 without looking at the password or the code."""

    form_class = SignInForm
    template_name = "accounts/sign_in.html"
    redirect_authenticated_user = True
    sign_in_attempt: Attempt | None = None
    code_attempt: Attempt | None = None

    def get_initial(self) -> dict[str, Any]:
        return {"code": self.request.GET.get("code", "")}

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        address = client_address(request)
        username = request.POST.get("username", "")
        code = request.POST.get("code", "").strip()
        try:
            self.sign_in_attempt = sign_in_attempt_start(username=username, address=address)
            if code:
                try:
                    self.code_attempt = enrolment_code_attempt_start(address=address)
                except TooManyRequestsError:
                    self.sign_in_attempt.abandoned()  # nothing was tried
                    raise
        except TooManyRequestsError as error:
            form = self.form_class(request, initial={"username": username, "code": code})
            return _refused(request, self.template_name, self.get_context_data(form=form), error)
        response: HttpResponse = super().post(request, *args, **kwargs)
        return response

    def _settle(self, form: SignInForm) -> None:
        if self.sign_in_attempt is not None and form.get_user() is not None:
            self.sign_in_attempt.succeeded()
        if self.code_attempt is not None and "code" not in form.errors:
            self.code_attempt.succeeded()

    def form_invalid(self, form: SignInForm) -> HttpResponse:  # type: ignore[override]
        self._settle(form)
        return super().form_invalid(form)

    def form_valid(self, form: SignInForm) -> HttpResponse:  # type: ignore[override]
        self._settle(form)
        response = super().form_valid(form)
        code = form.cleaned_data.get("code")
        if code:
            try:
                messages.success(
                    self.request, str(course_join_with_code(user=form.get_user(), code=code))
                )
            except ApplicationError as error:
                messages.error(self.request, error.message)
        return response


class SignOutView(LogoutView):
    next_page = "accounts:sign-in"


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """The person's courses and, for those they teach, the codes to join them."""
    user = _user(request)
    memberships = (
        CourseMembership.objects.filter(user=user).select_related("course").order_by("course")
    )
    taught = list(courses_taught_by(user).filter(memberships__user=user).order_by("name"))
    codes = {
        (code.course_id, code.role): code
        for code in EnrolmentCode.objects.filter(course__in=taught)
    }
    teaching = [
        {
            "course": course,
            "codes": [
                {
                    "role": role,
                    "label": role.label,
                    "code": codes.get((course.pk, role.value)),
                    "shown": format_code(codes[(course.pk, role.value)].code)
                    if (course.pk, role.value) in codes
                    else "",
                }
                for role in CourseRole
            ],
        }
        for course in taught
    ]
    return render(
        request,
        "accounts/home.html",
        {"memberships": memberships, "teaching": teaching},
    )


def _code_found(form: JoinCourseForm | SignUpForm, attempt: Attempt) -> bool:
    """Validate the form; a code that exists does not count against the limit."""
    valid = form.is_valid()
    if "code" not in form.errors:
        attempt.succeeded()
    return valid


@login_required
def join_course(request: HttpRequest) -> HttpResponse:
    """Join a course with a code; wrong codes are limited per person and per address."""
    if request.method != "POST":
        form = JoinCourseForm(initial={"code": request.GET.get("code", "")})
        return render(request, "accounts/join.html", {"form": form})
    try:
        attempt = enrolment_code_attempt_start(
            address=client_address(request), user_id=_user(request).pk
        )
    except TooManyRequestsError as error:
        form = JoinCourseForm(initial={"code": request.POST.get("code", "")})
        return _refused(request, "accounts/join.html", {"form": form}, error)
    form = JoinCourseForm(request.POST)
    if _code_found(form, attempt):
        try:
            enrolment = course_join_with_code(user=_user(request), code=form.cleaned_data["code"])
        except ApplicationError as error:
            form.add_error("code", error.message)
        else:
            messages.success(request, str(enrolment))
            return redirect("accounts:home")
    return render(request, "accounts/join.html", {"form": form})


def sign_up(request: HttpRequest) -> HttpResponse:
    """A new local account with a course code; the person lands in the course. Wrong codes
    are limited per address."""
    if request.user.is_authenticated:
        return redirect("accounts:join")
    if request.method != "POST":
        form = SignUpForm(initial={"code": request.GET.get("code", "")})
        return render(request, "accounts/sign_up.html", {"form": form})
    try:
        attempt = enrolment_code_attempt_start(address=client_address(request))
    except TooManyRequestsError as error:
        fields = ("code", "username", "first_name", "last_name", "email")
        form = SignUpForm(initial={name: request.POST.get(name, "") for name in fields})
        return _refused(request, "accounts/sign_up.html", {"form": form}, error)
    form = SignUpForm(request.POST)
    if _code_found(form, attempt):
        data = form.cleaned_data
        try:
            user, enrolment = user_signup_with_code(
                code=data["code"],
                username=data["username"],
                password=data["password1"],
                first_name=data["first_name"],
                last_name=data["last_name"],
                email=data["email"],
            )
        except ApplicationError as error:
            form.add_error("password1" if error.extra.get("field") else "username", error.message)
        else:
            login(request, user, backend="accounts.backends.LocalAccountBackend")
            messages.success(request, str(enrolment))
            return redirect("accounts:home")
    return render(request, "accounts/sign_up.html", {"form": form})


@login_required
def choose_password(request: HttpRequest) -> HttpResponse:
    """Choose a new password: required after a reset, possible at any time."""
    user = _user(request)
    form = SetPasswordForm(user, request.POST or None)
    if request.method == "POST" and form.is_valid():
        user_password_change(user=user, password=form.cleaned_data["new_password1"])
        update_session_auth_hash(request, user)
        messages.success(request, "Your new password is saved.")
        return redirect("accounts:home")
    return render(
        request,
        "accounts/choose_password.html",
        {"form": form, "required": user.must_change_password},
    )


@login_required
@require_POST
def course_code(request: HttpRequest, course_id: int, role: str) -> HttpResponseBase:
    """A teacher regenerates or disables one of their course's codes."""
    course = get_object_or_404(Course, pk=course_id)
    if role not in CourseRole.values:
        return redirect("accounts:home")
    try:
        if request.POST.get("action") == "disable":
            enrolment_code_disable(actor=_user(request), course=course, role=CourseRole(role))
            messages.success(request, f"The {role} code of “{course.name}” is disabled.")
        else:
            code = enrolment_code_regenerate(
                actor=_user(request), course=course, role=CourseRole(role)
            )
            messages.success(
                request, f"New {role} code for “{course.name}”: {format_code(code.code)}."
            )
    except ApplicationError as error:
        messages.error(request, error.message)
    return redirect(reverse("accounts:home"))
