"""The one error type of the application and its rendering for the API.

Services raise `ApplicationError` (or a subclass). Views never build error bodies by hand:
the API exception handler (`isard.core.api.errors`) turns any of them into
`{"message": ..., "extra": ...}` with the status code that the subclass declares. Plain
Python, so that models and validators may import it.
"""

from __future__ import annotations

from typing import Any


class ApplicationError(Exception):
    """A failure the user can understand and act on."""

    status_code = 400

    def __init__(self, message: str, *, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra or {}


class PermissionDeniedError(ApplicationError):
    status_code = 403


class NotFoundError(ApplicationError):
    status_code = 404


class ConflictError(ApplicationError):
    """The object is not in a state that allows the operation (or someone else won a race)."""

    status_code = 409


class QuotaExceededError(ApplicationError):
    status_code = 422


class TooManyRequestsError(ApplicationError):
    """Too many attempts in a short time; `extra["retry_after"]` says how many seconds to wait."""

    status_code = 429


class NoCapacityError(ApplicationError):
    """No hypervisor can take the desktop right now."""

    status_code = 503


class InfrastructureError(ApplicationError):
    """libvirt, qemu-img or the storage failed; the message says which and why."""

    status_code = 502


class TaskQueueUnavailableError(ApplicationError):
    """The Celery broker (Redis) could not take a task: nothing was done, try again later."""

    status_code = 503
