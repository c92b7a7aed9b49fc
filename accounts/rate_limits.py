"""Limits on failed sign-ins and wrong course codes on the people pages.

Without them a script could guess a password, or a course's enrolment code (which lets
anyone into the course), as fast as the server answers. The API's login has its own
throttle (isard.core.api.throttling); both count in isard.core.rate_limits' windows.

Each attempt first takes a place in its windows (per username and per client address for
a sign-in; per address and per signed-in person for a code). When a window is full the
attempt is refused before any password or code is looked at, so that a correct password
does not get through a full window and the time of the answer says nothing. An attempt
that succeeds gives its places back: only failures count, so a class signing in from
one school address is not limited by its own successful sign-ins.
"""

from __future__ import annotations

import hashlib
import logging
import unicodedata
from dataclasses import dataclass, field

from django.conf import settings

from isard.core import metrics
from isard.core.errors import TooManyRequestsError
from isard.core.rate_limits import RateWindow, rate_window_release, rate_window_take

logger = logging.getLogger(__name__)


def sign_in_name(username: str) -> str:
    """The username as every way to sign in reads it: NFKC, as Django's username field
    normalises it (so "ｓtudent3", with a fullwidth s, is student3), without the spaces
    around it."""
    return unicodedata.normalize("NFKC", username).strip()


def _ident(value: str) -> str:
    # Cache keys may not hold spaces or be long; usernames are compared as Django's
    # lookups would (case-insensitively for LDAP), so "Alice", "alice" and "ａｌｉｃｅ"
    # share a window (NFKC again after casefold, which can leave a string unnormalised).
    key = unicodedata.normalize("NFKC", sign_in_name(value).casefold())
    return hashlib.sha256(key.encode()).hexdigest()[:32]


@dataclass
class Attempt:
    """The places one attempt took; `succeeded()` gives them back."""

    windows: list[RateWindow] = field(default_factory=list)
    #: "sign_in" or "course_code": what the metrics count it as.
    kind: str = ""

    def succeeded(self) -> None:
        """The password or the code was right: this attempt does not count."""
        if self.kind == "sign_in" and self.windows:
            metrics.count(metrics.SIGN_INS)
        self.abandoned()

    def abandoned(self) -> None:
        """Nothing was tried after all (another limit refused): the places go back."""
        for window in self.windows:
            rate_window_release(window)
        self.windows = []


def _take(kind: str, what: str, refusal: str, windows: list[tuple[str, str, str]]) -> Attempt:
    """Take a place in each (key, rate, description) window, or none and refuse."""
    attempt = Attempt(kind=kind)
    for key, rate, description in windows:
        window = rate_window_take(key=key, rate=rate)
        if not window.allowed:
            attempt.abandoned()  # the places already taken: nothing was tried
            metrics.count(metrics.SIGN_IN_REFUSALS, limit=kind)
            wait = window.retry_after()
            logger.warning(
                "%s refused: too many failures %s; %d s to wait", what, description, wait
            )
            raise TooManyRequestsError(
                f"{refusal} Wait {_duration(wait)} and try again.",
                extra={"retry_after": wait},
            )
        attempt.windows.append(window)
    return attempt


def _duration(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = -(-seconds // 60)
    return f"{minutes} minutes"


def sign_in_attempt_start(*, username: str, address: str) -> Attempt:
    """Count a sign-in attempt against `username` and the client `address` before the
    password is checked; raises TooManyRequestsError (429) while either is over its rate
    (ISARD_SIGNIN_RATE, ISARD_SIGNIN_ADDRESS_RATE). Call `succeeded()` on a right password.
    """
    attempt = _take(
        "sign_in",
        "sign-in",
        "Too many failed sign-ins in a short time.",
        [
            (
                f"throttle_signin_user_{_ident(username)}",
                settings.ISARD_SIGNIN_RATE,
                f"for username {username!r}",
            ),
            (
                f"throttle_signin_address_{_ident(address)}",
                settings.ISARD_SIGNIN_ADDRESS_RATE,
                f"from {address}",
            ),
        ],
    )
    metrics.count(metrics.SIGN_IN_ATTEMPTS)
    return attempt


def enrolment_code_attempt_start(*, address: str, user_id: int | None = None) -> Attempt:
    """Count a course code attempt against the client `address` (ISARD_SIGNIN_ADDRESS_RATE)
    and the signed-in person (ISARD_ENROLMENT_CODE_RATE) before the code is looked up;
    raises TooManyRequestsError (429) while either is over its rate. Call `succeeded()`
    when the code was found."""
    windows = [
        (
            f"throttle_code_address_{_ident(address)}",
            settings.ISARD_SIGNIN_ADDRESS_RATE,
            f"from {address}",
        ),
    ]
    if user_id is not None:
        windows.append(
            (
                f"throttle_code_user_{user_id}",
                settings.ISARD_ENROLMENT_CODE_RATE,
                f"by user {user_id}",
            )
        )
    return _take(
        "course_code", "course code", "Too many wrong course codes in a short time.", windows
    )
