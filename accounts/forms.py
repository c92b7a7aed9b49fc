"""Forms of the sign-in, sign-up and join pages; they validate, the services write."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.validators import UnicodeUsernameValidator

from accounts.ldap.backend import DIRECTORY_UNREACHABLE_MESSAGE, directory_unreachable
from accounts.services.enrolment import enrolment_code_find
from isard.core.errors import ApplicationError

CODE_HELP = "The course code your teacher gave you, like ABCD-EFGH."


def clean_code(value: str) -> str:
    """A code that exists and is enabled, or a form error that says what is wrong."""
    try:
        enrolment_code_find(value)
    except ApplicationError as error:
        raise forms.ValidationError(error.message, code="enrolment_code") from error
    return value


class DirectoryAwareSignInMixin:
    """A failed sign-in says the directory is down when it is, not "wrong password".

    Whatever the username: it tells nobody which names exist. Local accounts still sign
    in meanwhile (the backends try them after the directory).
    """

    request: Any

    def get_invalid_login_error(self) -> forms.ValidationError:
        if directory_unreachable(self.request):
            return forms.ValidationError(
                DIRECTORY_UNREACHABLE_MESSAGE, code="directory_unreachable"
            )
        error: forms.ValidationError = super().get_invalid_login_error()  # type: ignore[misc]
        return error


class SignInForm(DirectoryAwareSignInMixin, AuthenticationForm):
    """Username and password, and optionally a course code to join at the same time."""

    code = forms.CharField(
        label="Course code (optional)",
        required=False,
        max_length=32,
        help_text="To join a course as you sign in.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "autocapitalize": "characters"}),
    )

    def clean_code(self) -> str:
        value = self.cleaned_data.get("code", "").strip()
        return clean_code(value) if value else ""


class JoinCourseForm(forms.Form):
    code = forms.CharField(
        label="Course code",
        max_length=32,
        help_text=CODE_HELP,
        widget=forms.TextInput(
            attrs={"autocomplete": "off", "autocapitalize": "characters", "autofocus": True}
        ),
    )

    def clean_code(self) -> str:
        return clean_code(self.cleaned_data["code"])


class SignUpForm(forms.Form):
    code = forms.CharField(
        label="Course code",
        max_length=32,
        help_text=CODE_HELP,
        widget=forms.TextInput(attrs={"autocomplete": "off", "autocapitalize": "characters"}),
    )
    username = forms.CharField(
        label="Username",
        max_length=150,
        help_text="Letters, digits and @ . + - _ only.",
        widget=forms.TextInput(attrs={"autocomplete": "username"}),
    )
    first_name = forms.CharField(
        label="First name",
        max_length=150,
        required=False,
        widget=forms.TextInput(attrs={"autocomplete": "given-name"}),
    )
    last_name = forms.CharField(
        label="Last name",
        max_length=150,
        required=False,
        widget=forms.TextInput(attrs={"autocomplete": "family-name"}),
    )
    email = forms.EmailField(
        label="E-mail (optional)",
        required=False,
        widget=forms.EmailInput(attrs={"autocomplete": "email"}),
    )
    password1 = forms.CharField(
        label="Password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )
    password2 = forms.CharField(
        label="Password again",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def clean_code(self) -> str:
        return clean_code(self.cleaned_data["code"])

    def clean_username(self) -> str:
        value = self.cleaned_data["username"].strip()
        UnicodeUsernameValidator()(value)
        return value

    def clean(self) -> dict[str, Any] | None:
        cleaned = super().clean()
        if cleaned and cleaned.get("password1") != cleaned.get("password2"):
            self.add_error("password2", "The two passwords differ.")
        return cleaned
