"""What a task to send is: its name, its keyword arguments and Celery's options.

Apart from `isard.core.tasks` (which sends them) so that the apps' `task_calls` modules
import nothing of Django: the Celery app reads the task names while settings load.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TaskCall:
    """One task to send: its registered name, its keyword arguments, Celery's options."""

    name: str
    kwargs: Mapping[str, Any]
    options: Mapping[str, Any] = field(default_factory=dict)
