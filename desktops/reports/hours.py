"""The seconds each desktop ran per hour, read from its event rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import F, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce

from desktops.models import Desktop, DesktopEvent
from desktops.reports.segments import RUNNING_STATUSES, running_spans, seconds_per_hour


@dataclass(frozen=True)
class DesktopHours:
    """One desktop's running seconds per hour, with what it counts towards."""

    desktop_id: int
    desktop_name: str
    owner_id: int
    course_id: int | None
    template_id: int | None
    school_id: int | None
    seconds: dict[datetime, int]


#: The school a desktop's hours count towards: its owner's, else its course's.
_SCHOOL = Coalesce(F("owner__school"), F("course__school"))


def usage_desktops() -> QuerySet[Desktop]:
    """Desktops with the school their hours count towards: the owner's, else the course's.

    Annotated as `school`, the name `UsageHour` has, so one `Q` scopes both."""
    return Desktop.objects.annotate(school=_SCHOOL)


def desktops_hours(
    *, start: datetime, end: datetime, desktops: QuerySet[Desktop] | None = None
) -> list[DesktopHours]:
    """Every desktop (of `desktops`) that ran in [start, end), with its seconds per hour.

    A desktop's status at `start` is the one its last earlier event gave it, so a guest
    started days ago and running still counts from `start` on.
    """
    if end <= start:
        return []
    desktops = desktops if desktops is not None else usage_desktops()
    status_then = (
        DesktopEvent.objects.filter(desktop=OuterRef("pk"), created_at__lt=start)
        .order_by("-created_at", "-pk")
        .values("to_status")[:1]
    )
    running_at_start = set(
        desktops.annotate(status_then=Subquery(status_then))
        .filter(status_then__in=RUNNING_STATUSES)
        .values_list("pk", flat=True)
    )
    changes: dict[int, list[tuple[datetime, str]]] = {}
    for desktop_id, at, status in (
        DesktopEvent.objects.filter(
            desktop__in=desktops.values("pk"), created_at__gte=start, created_at__lt=end
        )
        .order_by("desktop_id", "created_at", "pk")
        .values_list("desktop_id", "created_at", "to_status")
    ):
        changes.setdefault(desktop_id, []).append((at, status))
    wanted = running_at_start | set(changes)
    if not wanted:
        return []
    found = []
    for row in (
        desktops.filter(pk__in=wanted)
        .order_by("pk")
        .values("pk", "name", "owner_id", "course_id", "template_id", school_of=_SCHOOL)
    ):
        spans = running_spans(
            running_at_start=row["pk"] in running_at_start,
            changes=changes.get(row["pk"], []),
            start=start,
            end=end,
        )
        seconds = seconds_per_hour(spans)
        if seconds:
            found.append(
                DesktopHours(
                    desktop_id=row["pk"],
                    desktop_name=row["name"],
                    owner_id=row["owner_id"],
                    course_id=row["course_id"],
                    template_id=row["template_id"],
                    school_id=row["school_of"],
                    seconds=seconds,
                )
            )
    return found
