"""The hosts' tasks as typed calls: each task's name is spelled here and only here."""

from __future__ import annotations

from collections.abc import Sequence

from isard.core.task_call import TaskCall

CHECK_HOST = "hypervisors.tasks.check_host"


def check_host(*, uri: str, pool_paths: Sequence[str], queue: str, expires: float) -> TaskCall:
    """What the worker of `queue` sees of the host's libvirt at `uri` and of the pools."""
    return TaskCall(
        CHECK_HOST,
        {"uri": uri, "pool_paths": list(pool_paths)},
        {"queue": queue, "expires": expires},
    )
