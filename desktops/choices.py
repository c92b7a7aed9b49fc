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
    RESETTING = "resetting", "Going back to the template"
    UNKNOWN = "unknown", "Unknown (host unreachable)"
    DELETING = "deleting", "Deleting"
    DELETED = "deleted", "In the recycle bin"


S = DesktopStatus

TRANSITIONS: dict[DesktopStatus, frozenset[DesktopStatus]] = {
    S.CREATING: frozenset({S.STOPPED, S.FAILED}),
    # STOPPED -> STARTED: the guest was started outside isard (seen by the reconciler).
    S.STOPPED: frozenset(
        {S.STARTING, S.STARTED, S.CREATING_TEMPLATE, S.RESETTING, S.DELETING, S.FAILED}
    ),
    S.STARTING: frozenset({S.STARTED, S.STOPPED, S.FAILED}),
    S.STARTED: frozenset({S.SHUTTING_DOWN, S.STOPPING, S.STOPPED, S.FAILED, S.UNKNOWN}),
    S.SHUTTING_DOWN: frozenset({S.STOPPED, S.STOPPING, S.STARTED, S.FAILED, S.UNKNOWN}),
    S.STOPPING: frozenset({S.STOPPED, S.FAILED, S.UNKNOWN}),
    # FAILED -> RESETTING: a desktop whose disk is broken can start over from its template.
    S.FAILED: frozenset({S.STARTING, S.STOPPED, S.STARTED, S.RESETTING, S.DELETING}),
    S.CREATING_TEMPLATE: frozenset({S.STOPPED, S.FAILED}),
    S.RESETTING: frozenset({S.STOPPED, S.FAILED}),
    S.UNKNOWN: frozenset({S.STARTED, S.STOPPED, S.FAILED, S.DELETING}),
    S.DELETING: frozenset({S.DELETED, S.FAILED}),
    S.DELETED: frozenset({S.STOPPED}),
}

#: Statuses in which the guest may be running on its hypervisor.
ACTIVE_STATUSES = frozenset({S.STARTING, S.STARTED, S.SHUTTING_DOWN, S.STOPPING})
#: Statuses where a Celery task owns the desktop; user actions wait for it to finish.
BUSY_STATUSES = frozenset(
    {S.CREATING, S.CREATING_TEMPLATE, S.RESETTING, S.DELETING, S.STARTING, S.STOPPING}
)
#: Statuses during which something is under way: the cards show a progress bar. A
#: shutdown waits for the guest rather than a task, but a person sees it working all the same.
WORKING_STATUSES = BUSY_STATUSES | {S.SHUTTING_DOWN}


class DesktopAction(models.TextChoices):
    """What a person may ask of a desktop from its card, in the order the card shows them."""

    OPEN = "open", "Open in the browser"
    VV = "vv", "Download .vv (SPICE)"
    START = "start", "Start"
    SHUTDOWN = "shutdown", "Shut down"
    STOP = "stop", "Force off"
    DELETE = "delete", "Delete"
    RESTORE = "restore", "Restore"


A = DesktopAction

#: The status each action moves the desktop to: the action is offered where `TRANSITIONS`
#: allows that change (the services then make it through the same table).
ACTION_TARGETS: dict[DesktopAction, DesktopStatus] = {
    A.START: S.STARTING,
    A.SHUTDOWN: S.SHUTTING_DOWN,
    A.STOP: S.STOPPING,
    A.DELETE: S.DELETING,
    A.RESTORE: S.STOPPED,
}
#: Actions that need more than the table says: the guest's screen needs it running; a
#: restore is the way out of the recycle bin only (FAILED -> STOPPED is the reconciler's).
ACTION_ONLY_FROM: dict[DesktopAction, frozenset[DesktopStatus]] = {
    A.OPEN: frozenset({S.STARTED}),
    A.VV: frozenset({S.STARTED}),
    A.RESTORE: frozenset({S.DELETED}),
}


def actions_allowed(status: str) -> list[DesktopAction]:
    """The actions a desktop in `status` offers, from the transition table."""
    current = DesktopStatus(status)
    allowed = []
    for action in DesktopAction:
        only_from = ACTION_ONLY_FROM.get(action)
        if only_from is not None and current not in only_from:
            continue
        target = ACTION_TARGETS.get(action)
        if target is not None and target not in TRANSITIONS[current]:
            continue
        allowed.append(action)
    return allowed
