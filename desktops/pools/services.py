"""Pools: make one, hand out its desktops at once, and keep it filled.

The hand-out is a compare-and-set: a free desktop becomes a student's with one
`UPDATE ... WHERE pool_taken_at IS NULL`, so of any number of students racing for it
exactly one gets it, and the others try the next one; a student holds at most one desktop
of a pool (a unique index, checked by the database). Nothing here calls libvirt: starting
and creating go through the desktops' services and their tasks.
"""

from __future__ import annotations

import logging
import random

from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.choices import CourseRole
from accounts.models import Course, CourseMembership, User
from accounts.permissions import can_manage_course
from accounts.quotas import QuotaChange, quota_check, start_change
from desktops import task_calls
from desktops.choices import DesktopStatus
from desktops.models import Desktop, Pool
from desktops.pools.selectors import (
    free_desktops,
    pool_counts,
    pools_managed_by,
    pools_visible_to,
)
from desktops.services.lifecycle import desktop_start, desktop_stop
from desktops.services.provisioning import desktops_create_bulk
from desktops.services.recycle_bin import desktop_delete
from desktops.services.sessions import session_fields
from desktops.services.transitions import desktop_event_record
from isard.core.errors import ApplicationError, ConflictError, NotFoundError, PermissionDeniedError
from isard.core.tasks import send_after_commit
from isard.core.text import name_check
from templates_app.models import Template
from templates_app.selectors import template_is_visible_to

logger = logging.getLogger(__name__)

S = DesktopStatus

MAX_SIZE = 200
#: After a hand-out, another refill is asked for at most this often (seconds).
REFILL_SECONDS = 2
#: Free desktops looked at per hand-out; racing students each try them in their own order.
CANDIDATES = 16


def _check_sizes(started: int, spare: int) -> None:
    for field, value in (("started", started), ("spare", spare)):
        if not 0 <= value <= MAX_SIZE:
            message = f"Keep between 0 and {MAX_SIZE} desktops."
            raise ApplicationError(message, extra={"fields": {field: [message]}})


def pool_create(
    *,
    actor: User,
    course: Course,
    template: Template,
    name: str,
    started: int,
    spare: int,
    volatile: bool = False,
) -> Pool:
    """A pool for a course the person teaches; it fills in the background.

    A volatile pool takes its desktops back: once a student's desktop stops (or they sign
    out) it goes back to the template and to the pool for the next student."""
    if not can_manage_course(actor, course):
        raise PermissionDeniedError("You can only make a pool for a course you teach.")
    if not template_is_visible_to(template, actor):
        raise PermissionDeniedError(f"The template “{template.name}” is not shared with you.")
    name = name_check(name.strip())
    if not name or len(name) > 200:
        raise ApplicationError(
            "A pool needs a name of at most 200 characters.",
            extra={"fields": {"name": ["At most 200 characters, not empty."]}},
        )
    _check_sizes(started, spare)
    with transaction.atomic():
        pool = Pool.objects.create(
            name=name,
            course=course,
            template=template,
            owner=actor,
            started=started,
            spare=spare,
            volatile=volatile,
        )
        send_after_commit(task_calls.refill_pool(pool_id=pool.pk))
    return pool


def pool_resize(*, actor: User, pool: Pool, started: int, spare: int) -> Pool:
    """New sizes. Growing fills at once; shrinking leaves the free desktops there are
    (nobody's work is on them) until they are taken or deleted by hand."""
    if not pools_managed_by(actor).filter(pk=pool.pk).exists():
        raise NotFoundError("No such pool.")
    _check_sizes(started, spare)
    with transaction.atomic():
        Pool.objects.filter(pk=pool.pk).update(started=started, spare=spare)
        send_after_commit(task_calls.refill_pool(pool_id=pool.pk))
    pool.refresh_from_db()
    return pool


def pool_get(*, actor: User, pool_id: int) -> Pool:
    pool = (
        pools_visible_to(actor)
        .select_related("template__hardware", "course")
        .filter(pk=pool_id)
        .first()
    )
    if pool is None:
        raise NotFoundError("No such pool.")
    return pool


def _refill_soon(pool: Pool) -> None:
    """Ask for a refill, once per `REFILL_SECONDS` of hand-outs however many there are
    (a class of 60 takes 60 desktops at once: one refill then, and beat every 30 s)."""
    if cache.add(f"pool-refill:{pool.pk}", 1, timeout=REFILL_SECONDS):
        send_after_commit(task_calls.refill_pool(pool_id=pool.pk))


def _take_change(pool: Pool) -> QuotaChange:
    """A desktop more, and running: what taking one adds to the student's use."""
    running = start_change(pool.template.hardware)
    return QuotaChange(
        desktops=1,
        running=running.running,
        vcpus=running.vcpus,
        memory_mib=running.memory_mib,
    )


def _held(pool: Pool, student: User) -> Desktop | None:
    return (
        Desktop.objects.filter(pool=pool, owner=student, pool_taken_at__isnull=False)
        .exclude(status__in=(S.DELETING, S.DELETED))
        .first()
    )


def pool_take(*, actor: User, pool: Pool) -> Desktop:
    """Give the student a desktop of the pool at once: a running one if there is one.

    Asking again gives the same desktop. Refused plainly: not a student of the course
    (not found), a quota, or no free desktop (more are on their way).
    """
    studies = CourseMembership.objects.filter(
        course_id=pool.course_id, user=actor, role=CourseRole.STUDENT
    )
    if not studies.exists():
        raise NotFoundError("No such pool.")
    held = _held(pool, actor)
    if held is not None:
        return held
    taken = None
    with transaction.atomic():
        quota_check(
            owner=actor,
            course=pool.course,
            change=_take_change(pool),
        )
        candidates = list(
            free_desktops(pool)
            .filter(status__in=(S.STARTED, S.STOPPED))
            .order_by("-status", "pk")  # "started" before "stopped"
            .values_list("pk", "status")[: CANDIDATES * 2]
        )
        started = [pk for pk, status in candidates if status == S.STARTED]
        stopped = [pk for pk, status in candidates if status == S.STOPPED]
        random.shuffle(started)
        random.shuffle(stopped)
        now = timezone.now()
        # The student's session (its course's time limit) begins with the take.
        session = session_fields(Desktop(course=pool.course), now=now)
        for pk in [*started, *stopped][:CANDIDATES]:
            try:
                with transaction.atomic():
                    won = Desktop.objects.filter(
                        pk=pk, pool=pool, pool_taken_at__isnull=True
                    ).update(owner=actor, pool_taken_at=now, **session)
            except IntegrityError:
                won = 0  # this student won another one meanwhile (a second request)
                break
            if won:
                taken = Desktop.objects.select_related("hardware", "owner").get(pk=pk)
                desktop_event_record(taken, f"taken from the pool “{pool.name}”", actor)
                break
        _refill_soon(pool)
    if taken is None:
        held = _held(pool, actor)
        if held is not None:
            return held
        raise ConflictError(
            f"The pool “{pool.name}” has no free desktop right now; more are being made. "
            "Try again in a minute.",
            extra={"reason": "pool-empty"},
        )
    if taken.status == S.STOPPED:
        taken = desktop_start(actor=actor, desktop=taken)
    return taken


def pool_delete(*, actor: User, pool: Pool) -> Pool:
    """Delete the pool: nobody takes from it any more, its free desktops go (running ones
    forced off first: nobody's work is on them; then to its teacher's recycle bin), and
    the students keep the desktops they took."""
    if not pools_managed_by(actor).filter(pk=pool.pk).exists():
        raise NotFoundError("No such pool.")
    Pool.objects.filter(pk=pool.pk, deleted_at__isnull=True).update(deleted_at=timezone.now())
    pool.refresh_from_db()
    pool_sweep_deleted(pool_id=pool.pk)
    return pool


def pool_sweep_deleted(*, pool_id: int) -> int:
    """One pass over a deleted pool's free desktops; returns how many are still to go
    (busy now, or being forced off): the beat passes again until none is left."""
    pool = Pool.objects.select_related("owner").get(pk=pool_id)
    left = 0
    free = Desktop.objects.filter(pool=pool, pool_taken_at__isnull=True).exclude(
        status__in=(S.DELETING, S.DELETED)
    )
    for desktop in free.select_related("owner", "hypervisor"):
        try:
            if desktop.status in (S.STARTED, S.SHUTTING_DOWN):
                desktop_stop(actor=pool.owner, desktop=desktop)
                left += 1
            elif desktop.status in (S.STOPPED, S.FAILED, S.UNKNOWN):
                desktop_delete(actor=pool.owner, desktop=desktop)
            else:
                left += 1  # creating, starting, stopping: the next pass
        except ApplicationError as error:
            logger.warning("deleted pool %s, desktop %s: %s", pool.pk, desktop.pk, error.message)
            left += 1
    return left


def pool_refill(*, pool_id: int) -> dict[str, int]:
    """Make and start free desktops up to the pool's sizes, within the owner's quotas
    and the hosts' capacity; what falls short is said in `pool.problem`."""
    pool = (
        Pool.objects.select_related("template", "course", "owner")
        .filter(pk=pool_id, deleted_at__isnull=True)
        .first()
    )
    if pool is None:
        return {}
    counts = pool_counts(pool)
    problems: list[str] = []
    made = 0
    missing = pool.started + pool.spare - counts.free
    if missing > 0:
        try:
            with transaction.atomic():
                quota_check(
                    owner=pool.owner, course=pool.course, change=QuotaChange(desktops=missing)
                )
                desktops = desktops_create_bulk(
                    actor=pool.owner,
                    template=pool.template,
                    owners=[pool.owner] * missing,
                    name=pool.name,
                    course=pool.course,
                )
                Desktop.objects.filter(pk__in=[d.pk for d in desktops]).update(
                    pool=pool, volatile=pool.volatile
                )
                made = len(desktops)
        except ApplicationError as error:
            problems.append(f"Could not make {missing} more: {error.message}")
    started = 0
    to_start = pool.started - counts.started - _starting(pool)
    if to_start > 0:
        for desktop in free_desktops(pool).filter(status=S.STOPPED).order_by("pk")[:to_start]:
            try:
                desktop_start(actor=pool.owner, desktop=desktop)
                started += 1
            except ApplicationError as error:
                problems.append(f"Could not start more: {error.message}")
                break
    problem = " ".join(problems)
    if problem != pool.problem:
        Pool.objects.filter(pk=pool.pk).update(problem=problem)
        if problem:
            logger.warning("pool %s: %s", pool.pk, problem)
    return {"made": made, "started": started}


def _starting(pool: Pool) -> int:
    return free_desktops(pool).filter(status=S.STARTING).count()


def pools_refill_all() -> int:
    """Every pool, now and then (beat): new desktops become ready, taken ones are replaced;
    deleted pools' free desktops that are left go."""
    refilled = 0
    for pool_id in Pool.objects.filter(deleted_at__isnull=True).values_list("pk", flat=True):
        if pool_refill(pool_id=pool_id):
            refilled += 1
    leftovers = Desktop.objects.filter(
        pool__deleted_at__isnull=False, pool_taken_at__isnull=True
    ).exclude(status__in=(S.DELETING, S.DELETED))
    for pool_id in set(leftovers.values_list("pool_id", flat=True)):
        pool_sweep_deleted(pool_id=pool_id)
    return refilled
