"""Sending Celery tasks, and what happens when the task queue is unreachable.

A task is sent after the transaction that moved its object to a busy status commits (so
the worker never sees a status that is not there yet). If Redis cannot take it, the
request must not hang and the object must not stay busy for ever: the broker's sockets
time out (settings: CELERY_BROKER_TRANSPORT_OPTIONS), the sender's `undo` puts things
back, and the person gets TaskQueueUnavailableError (503).

Each app spells its tasks' names once, in its `task_calls.py`, as typed functions that
return a `TaskCall`; its `tasks.py` registers each task under that name. Arguments go by
keyword, and the Celery router (`hypervisors.routing`) reads them by keyword.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial

from celery import current_app
from django.db import transaction
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from isard.core.errors import TaskQueueUnavailableError
from isard.core.task_call import TaskCall

__all__ = ["TaskCall", "send_after_commit", "send_task"]

logger = logging.getLogger(__name__)

#: Errors that mean the broker did not take the message (kombu re-raises Redis's own).
BROKER_ERRORS: tuple[type[BaseException], ...] = (KombuOperationalError, RedisError, OSError)


def task_queue_unreachable_message(error: BaseException) -> str:
    return f"The task queue is unreachable ({error}); nothing was done, try again in a moment."


def send_task(
    call: TaskCall, on_failure: Callable[[str], None] | None = None, *, quiet: bool = False
) -> None:
    """Send a Celery task now; if the broker cannot take it, undo and raise a 503 error
    (`quiet`: log it only, for follow-up work whose cause is already committed).

    The result is ignored: the services record every outcome in the database, and
    subscribing to a result in Redis is what made a send wait ~20 s on a dead broker.
    """
    try:
        current_app.send_task(
            call.name, kwargs=dict(call.kwargs), ignore_result=True, **dict(call.options)
        )
    except BROKER_ERRORS as error:
        message = task_queue_unreachable_message(error)
        logger.error("could not send %s%s: %s", call.name, dict(call.kwargs), error)
        if on_failure is not None:
            on_failure(message)
        if quiet:
            return
        raise TaskQueueUnavailableError(message, extra={"task": call.name}) from error


def send_after_commit(
    call: TaskCall, *, undo: Callable[[str], None] | None = None, quiet: bool = False
) -> None:
    """Send `call` once the current transaction has committed.

    A `partial` of `send_task` (not a lambda) so tests can see what was scheduled. `undo`
    is called with the reason if the task could not be sent (see above).
    """
    transaction.on_commit(partial(send_task, call, on_failure=undo, quiet=quiet))
