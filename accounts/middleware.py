"""After a password reset, the person chooses a new password before anything else."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse


class PasswordChangeRequiredMiddleware:
    """Send someone whose password was reset to the page to choose a new one.

    Whatever page they open (the admin included), except that page, signing out and
    static files. Without this, the temporary password would keep working.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = getattr(request, "user", None)
        if (
            user is not None
            and user.is_authenticated
            and getattr(user, "must_change_password", False)
        ):
            allowed = (reverse("accounts:password"), reverse("accounts:sign-out"))
            if request.path not in allowed and not request.path.startswith("/static/"):
                return redirect(f"{allowed[0]}")
        return self.get_response(request)
