"""Who sees which pools, and what each holds now."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Q, QuerySet

from accounts.choices import CourseRole
from accounts.models import User
from accounts.permissions import courses_taught_by
from desktops.choices import DesktopStatus
from desktops.models import Desktop, Pool

S = DesktopStatus

#: A free desktop in one of these is gone or broken: it counts for nothing, and is not
#: handed out.
LOST_STATUSES = frozenset({S.FAILED, S.DELETING, S.DELETED, S.UNKNOWN})

#: Free desktops: made for the pool, nobody has taken them yet.
FREE = Q(pool_taken_at__isnull=True)
#: The same, among every desktop (the others have no pool, or a student's).
POOL_FREE = Q(pool__isnull=False, pool_taken_at__isnull=True)


def pools_managed_by(actor: User) -> QuerySet[Pool]:
    """Pools of the courses the person teaches (or manages, or every pool: admins)."""
    live = Pool.objects.filter(deleted_at__isnull=True)
    if actor.is_admin:
        return live
    return live.filter(course__in=courses_taught_by(actor).values("pk"))


def pools_visible_to(actor: User) -> QuerySet[Pool]:
    """Pools a person may open (a student of the course) or manage."""
    studying = Q(course__memberships__user=actor, course__memberships__role=CourseRole.STUDENT)
    managed = Q(pk__in=pools_managed_by(actor).values("pk"))
    return Pool.objects.filter(studying | managed, deleted_at__isnull=True).distinct()


def free_desktops(pool: Pool) -> QuerySet[Desktop]:
    return Desktop.objects.filter(FREE, pool=pool).exclude(status__in=LOST_STATUSES)


@dataclass(frozen=True)
class PoolCounts:
    started: int  # free and running: handed out at once
    ready: int  # free and defined (stopped): handed out, then started
    making: int  # free and being created or started
    taken: int  # students' now

    @property
    def free(self) -> int:
        return self.started + self.ready + self.making


def pool_counts(pool: Pool) -> PoolCounts:
    started = ready = making = 0
    for status in free_desktops(pool).values_list("status", flat=True):
        if status == S.STARTED:
            started += 1
        elif status == S.STOPPED:
            ready += 1
        else:
            making += 1
    taken = (
        Desktop.objects.filter(pool=pool, pool_taken_at__isnull=False)
        .exclude(status=S.DELETED)
        .count()
    )
    return PoolCounts(started=started, ready=ready, making=making, taken=taken)


def pools_to_take(actor: User) -> list[Pool]:
    """The pools of the person's courses (as a student) they hold no desktop of yet."""
    held = Desktop.objects.filter(owner=actor, pool__isnull=False, pool_taken_at__isnull=False)
    return list(
        Pool.objects.filter(
            course__memberships__user=actor,
            course__memberships__role=CourseRole.STUDENT,
            deleted_at__isnull=True,
        )
        .exclude(pk__in=held.exclude(status=S.DELETED).values("pool_id"))
        .select_related("course")
        .order_by("name", "pk")
    )
