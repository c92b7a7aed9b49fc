"""What every event row has: who, why and when (desktops', templates', media's, hosts').

Abstract: each room's event model adds the foreign key to its object and, for status
events, the two status fields with its own choices.

Every event row is also one log line (logger `isard.events`), written once the row is
committed, however it was saved (`create`, `bulk_create`, a state machine's bulk write):
the managers here do it, so no caller can forget. The line names the object, the person
who acted and, for a desktop, its host; the same fields travel as the record's `event`
attribute, which the JSON log format writes as keys (`ISARD_LOG_FORMAT=json`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from django.conf import settings
from django.db import models, transaction

logger = logging.getLogger("isard.events")


def _cached(instance: models.Model, field: str) -> Any:
    """A related object only if it is loaded already: a log line costs no query."""
    return instance._state.fields_cache.get(field)


def _name(instance: Any, attribute: str = "name") -> str:
    return str(getattr(instance, attribute, "")) if instance is not None else ""


class EventQuerySet(models.QuerySet[Any]):
    def create(self, **kwargs: Any) -> Any:
        row = super().create(**kwargs)
        events_log([row])
        return row

    def bulk_create(self, objs: Iterable[Any], *args: Any, **kwargs: Any) -> list[Any]:
        rows = super().bulk_create(objs, *args, **kwargs)
        events_log(rows)
        return rows


EventManager = models.Manager.from_queryset(EventQuerySet)


def events_log(rows: Sequence[Any]) -> None:
    """Log each row's line after the transaction that writes it commits (at once outside
    one); a rolled-back row is never logged."""
    if not rows:
        return
    lines = [row.log_fields() for row in rows]

    def write() -> None:
        for fields in lines:
            logger.info(event_line(fields), extra={"event": fields})

    transaction.on_commit(write)


def event_line(fields: dict[str, Any]) -> str:
    """`desktop 12 “Ana's desktop” stopped -> starting by ana on local: why` (the log's
    formatter escapes what people typed in it)."""
    kind, ident, name = fields["kind"], fields["id"], fields.get("name", "")
    text = f"{kind} {ident}" + (f" “{name}”" if name else "")
    if fields.get("to_status"):
        text += f" {fields.get('from_status') or '-'} -> {fields['to_status']}"
    if fields.get("actor"):
        text += f" by {fields['actor']}"
    if fields.get("host"):
        text += f" on {fields['host']}"
    if fields.get("reason"):
        text += f": {fields['reason']}"
    return text


class StatusEvent(models.Model):
    """One row per status change (and per notable action), oldest first."""

    reason = models.TextField(blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    objects = EventManager()

    #: The name of the foreign key to the object the event is about.
    subject_field = ""

    class Meta:
        abstract = True
        ordering = ["created_at", "pk"]

    def log_fields(self) -> dict[str, Any]:
        subject = _cached(self, self.subject_field)
        fields: dict[str, Any] = {
            "kind": self.subject_field,
            "id": getattr(self, f"{self.subject_field}_id"),
            "name": _name(subject),
            "from_status": getattr(self, "from_status", ""),
            "to_status": getattr(self, "to_status", ""),
            "reason": self.reason,
            "actor": _name(_cached(self, "actor"), "username") if self.actor_id else "",
        }
        return fields
