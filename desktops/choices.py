"""Desktop statuses and the only transitions allowed between them.

`desktops.services.desktop_transition` is the one function that changes a status; it
refuses any pair not listed in `TRANSITIONS`.
"""

from __future__ import annotations

from django.db import models


class DesktopStatus(models.TextChoices):
    CREATING = "creating", "Creating"
    STOPPED = "stopped", "Stopped"
    STARTING = "starting", "Starting"
    STARTED = "started", "Started"
    SHUTTING_DOWN = "shutting_down", "Shutting down"
    STOPPING = "stopping", "Stopping"
    FAILED = "failed", "Failed"
    CREATING_TEMPLATE = "creating_template", "Creating template"
    UNKNOWN = "unknown", "Unknown (host unreachable)"
    DELETING = "deleting", "Deleting"
    DELETED = "deleted", "In the recycle bin"


S = DesktopStatus

TRANSITIONS: dict[DesktopStatus, frozenset[DesktopStatus]] = {
    S.CREATING: frozenset({S.STOPPED, S.FAILED}),
    # STOPPED -> STARTED: the guest was started outside isard (seen by the reconciler).
    S.STOPPED: frozenset({S.STARTING, S.STARTED, S.CREATING_TEMPLATE, S.DELETING, S.FAILED}),
    S.STARTING: frozenset({S.STARTED, S.STOPPED, S.FAILED}),
    S.STARTED: frozenset({S.SHUTTING_DOWN, S.STOPPING, S.STOPPED, S.FAILED, S.UNKNOWN}),
    S.SHUTTING_DOWN: frozenset({S.STOPPED, S.STOPPING, S.STARTED, S.FAILED, S.UNKNOWN}),
    S.STOPPING: frozenset({S.STOPPED, S.FAILED, S.UNKNOWN}),
    S.FAILED: frozenset({S.STARTING, S.STOPPED, S.STARTED, S.DELETING}),
    S.CREATING_TEMPLATE: frozenset({S.STOPPED, S.FAILED}),
    S.UNKNOWN: frozenset({S.STARTED, S.STOPPED, S.FAILED, S.DELETING}),
    S.DELETING: frozenset({S.DELETED, S.FAILED}),
    S.DELETED: frozenset({S.STOPPED}),
}

#: Statuses in which the guest may be running on its hypervisor.
ACTIVE_STATUSES = frozenset({S.STARTING, S.STARTED, S.SHUTTING_DOWN, S.STOPPING})
#: Statuses where a Celery task owns the desktop; user actions wait for it to finish.
BUSY_STATUSES = frozenset({S.CREATING, S.CREATING_TEMPLATE, S.DELETING, S.STARTING, S.STOPPING})
