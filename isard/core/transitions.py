"""The one way a status changes: a declared table, a conditional UPDATE, an event row.

Desktops, templates and media each declare a `StateMachine` over their status field. A
change checks the table, then updates with `WHERE status = <as loaded>`, so of two
concurrent requests only one wins and the other is told (a ConflictError, never a
silent overwrite). Each change writes an event row in the same transaction, and the
machine's `after_commit` hook (the desktops' websocket broadcast) runs once the
transaction has committed, never for a change that was rolled back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, Generic, TypeVar

from django.db import models, transaction
from django.utils import timezone

from isard.core.errors import ConflictError

M = TypeVar("M", bound=models.Model)


@dataclass(frozen=True)
class Change(Generic[M]):
    """One status change as it was written: what a broadcast or a caller needs of it."""

    instance: M
    from_status: str
    to_status: str
    reason: str
    changed_at: datetime
    #: When it had entered `from_status` (the machine's `changed_at_field` as loaded):
    #: how long it stayed there, for the metrics; None without that field.
    previous_changed_at: datetime | None = None


#: Builds the event row of one change (not saved: the machine saves them in bulk).
EventFactory = Callable[[Change[M], Any], models.Model]


class StateMachine(Generic[M]):
    """A model's status field, its transition table and what each change records."""

    def __init__(
        self,
        *,
        model: type[M],
        statuses: type[models.TextChoices],
        table: Mapping[Any, frozenset[Any]],
        noun: str,
        event: EventFactory[M],
        status_field: str = "status",
        reason_field: str = "status_reason",
        changed_at_field: str | None = None,
        after_commit: Callable[[Sequence[Change[M]]], None] | None = None,
    ) -> None:
        self.model = model
        self.statuses = statuses
        self.table = {
            statuses(key): frozenset(statuses(v) for v in value) for key, value in table.items()
        }
        self.noun = noun
        self.event = event
        self.status_field = status_field
        self.reason_field = reason_field
        self.changed_at_field = changed_at_field
        self.after_commit = after_commit

    def allows(self, current: str, to: str) -> bool:
        return self.statuses(to) in self.table[self.statuses(current)]

    def _label(self, status: str) -> str:
        return str(self.statuses(status).label).lower()

    def transition(
        self, instance: M, *, to: str, reason: str = "", actor: Any = None, **fields: Any
    ) -> M:
        """Move `instance` from its status as loaded to `to`, or raise ConflictError."""
        _changed, conflicts = self.transition_many(
            changes=[(instance, fields)], to=to, reason=reason, actor=actor
        )
        if conflicts:
            raise conflicts[0]
        return instance

    def transition_many(
        self,
        *,
        changes: Sequence[tuple[M, dict[str, Any]]],
        to: str,
        reason: str = "",
        actor: Any = None,
    ) -> tuple[list[M], list[ConflictError]]:
        """Change many objects to `to` in one transaction; returns those changed and the
        conflicts (a pair the table refuses, or an object someone else moved meanwhile)."""
        target = self.statuses(to)  # a plain string is fine; a typo raises ValueError
        now = timezone.now()
        changed: list[M] = []
        conflicts: list[ConflictError] = []
        written: list[Change[M]] = []
        stamp: dict[str, Any] = {self.reason_field: reason}
        if self.changed_at_field:
            stamp[self.changed_at_field] = now
        with transaction.atomic():
            for instance, fields in changes:
                current = self.statuses(getattr(instance, self.status_field))
                entered = (
                    getattr(instance, self.changed_at_field) if self.changed_at_field else None
                )
                name = getattr(instance, "name", instance.pk)
                if target not in self.table[current]:
                    conflicts.append(
                        ConflictError(
                            f"The {self.noun} “{name}” is {self._label(current)}; "
                            f"it cannot become {self._label(target)}.",
                            extra={"status": current.value, "requested": target.value},
                        )
                    )
                    continue
                updated = self.model._default_manager.filter(
                    pk=instance.pk, **{self.status_field: current}
                ).update(**{self.status_field: target}, **stamp, **fields)
                if updated == 0:
                    fresh = self.model._default_manager.filter(pk=instance.pk).values_list(
                        self.status_field, flat=True
                    )
                    conflicts.append(
                        ConflictError(
                            f"The {self.noun} “{name}” changed meanwhile; try again.",
                            extra={"status": fresh.first(), "expected": current.value},
                        )
                    )
                    continue
                written.append(Change(instance, current.value, target.value, reason, now, entered))
                changed.append(instance)
                setattr(instance, self.status_field, target)
                for field_name, value in {**stamp, **fields}.items():
                    setattr(instance, field_name, value)
            events = [self.event(change, actor) for change in written]
            if events:
                type(events[0])._default_manager.bulk_create(events)
            if written and self.after_commit is not None:
                transaction.on_commit(partial(self.after_commit, written))
        return changed, conflicts
