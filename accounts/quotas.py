"""Quotas: what a person uses, what they may use, and the check before each new use.

Precedence, for each limit separately (see `accounts.models.Quota`), most specific first:

1. the person's own quota;
2. the course's quota for the person's role in it (students or teachers), then the
   course's quota for every member. The course is the one the action is about (the
   desktop's course, the course a class gets its desktops in); for an action outside any
   course, the most generous of the person's courses that set the limit, so that joining
   a course never lowers what another course allows;
3. the school's quota for the person's role, then the school's quota for everyone;
4. the default for the person's role (`Quota` with only a role);
5. nothing set anywhere: unlimited. Administrators are never limited.

Every limit is per person and counts everything the person owns, whichever course it was
made in. What counts:

- desktops: the person's desktops outside the recycle bin;
- running desktops, vCPUs, memory: desktops starting, running, shutting down or stopping
  (and those on a host that stopped answering), with their hardware's vCPUs and memory;
- disk: the space really used (qcow2 actual size) by the person's desktops (recycle bin
  included: the disk stays until purged), templates and media. A new desktop or
  template is refused once the person is over; new media is refused if it would go over;
- templates: templates the person owns that are not failed or in the recycle bin;
- media: media the person owns that did not fail.

`quota_check` (one person) and `quota_check_many` (a whole class, before anything is
created) raise `QuotaExceededError` (HTTP 422) with a message that names the limit, where
it is set and the numbers. Called inside a transaction, they lock the owner's row, so two
concurrent starts of one person's desktops are checked one after the other (PostgreSQL;
SQLite serialises writers anyway).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.db import transaction
from django.db.models import Q

from accounts.choices import Role
from accounts.models import Course, CourseMembership, Quota, User
from isard.core.errors import QuotaExceededError

if TYPE_CHECKING:
    from templates_app.models import HardwareProfile

GIB = 1024**3

#: How many people a class-wide refusal names before "and N more".
NAMES_SHOWN = 10


@dataclass(frozen=True)
class LimitKind:
    """One kind of limit: its `Quota` field, its `Usage` field and how to say it."""

    name: str
    field: str
    usage: str
    noun: str
    label: str
    singular: str = ""

    def noun_for(self, value: int) -> str:
        """ "1 desktop", "2 desktops"; units and uncountable nouns stay as they are."""
        return self.singular if value == 1 and self.singular else self.noun

    def from_quota(self, value: int) -> int:
        """A `Quota` field's value in the unit usage is counted in (disk: GiB to bytes)."""
        return value * GIB if self.name == "disk" else value

    def amount(self, value: int) -> str:
        """A usage or limit in the unit people read (GiB for disk)."""
        if self.name == "disk":
            gib = value / GIB
            return f"{gib:.0f} GiB" if gib == int(gib) else f"{gib:.1f} GiB"
        if self.name == "memory":
            return f"{value} MiB"
        return str(value)


KINDS: tuple[LimitKind, ...] = (
    LimitKind("desktops", "max_desktops", "desktops", "desktops", "Desktops", "desktop"),
    LimitKind(
        "running",
        "max_running",
        "running",
        "running desktops",
        "Running desktops",
        "running desktop",
    ),
    LimitKind(
        "vcpus",
        "max_vcpus",
        "vcpus",
        "vCPUs in running desktops",
        "vCPUs (running)",
        "vCPU in running desktops",
    ),
    LimitKind("memory", "max_memory_mib", "memory_mib", "of memory in running desktops", "Memory"),
    LimitKind("disk", "max_disk_gib", "disk_bytes", "of disk", "Disk"),
    LimitKind("templates", "max_templates", "templates", "templates", "Templates", "template"),
    LimitKind("media", "max_media", "media", "media", "Media"),
)
KIND_BY_NAME = {kind.name: kind for kind in KINDS}


@dataclass(frozen=True)
class Usage:
    """What a person uses now, or (as a change) what an action would add."""

    desktops: int = 0
    running: int = 0
    vcpus: int = 0
    memory_mib: int = 0
    disk_bytes: int = 0
    templates: int = 0
    media: int = 0

    def value(self, kind: LimitKind) -> int:
        return int(getattr(self, kind.usage))


#: What an action adds; the same fields as `Usage`.
QuotaChange = Usage


def start_change(hardware: HardwareProfile) -> QuotaChange:
    """What starting a desktop with this hardware adds."""
    return QuotaChange(running=1, vcpus=hardware.vcpus, memory_mib=hardware.memory_mib)


@dataclass(frozen=True)
class Limit:
    """A limit that applies to a person, and the quota that set it."""

    kind: LimitKind
    allowed: int
    quota: Quota
    course: Course | None
    role: str

    def scope_phrase(self, *, own: bool) -> str:
        """ "Your course “1A”", "The school “North”", "The default for students"..."""
        quota = self.quota
        if quota.user_id is not None:
            return "Your own quota" if own else "Their own quota"
        if quota.course_id is not None:
            return f"{'Your' if own else 'The'} course “{quota.course}”"
        if quota.school_id is not None:
            return f"{'Your' if own else 'The'} school “{quota.school}”"
        return f"The default for {role_plural(quota.role)}"

    def per_phrase(self) -> str:
        quota = self.quota
        if quota.user_id is not None:
            return ""
        # A course's rule for every member is said with the person's role in the course.
        role = quota.role or (self.role if quota.course_id is not None else "")
        return f" per {Role(role).label.lower()}" if role else " per person"

    @property
    def scope(self) -> str:
        quota = self.quota
        if quota.user_id is not None:
            return "user"
        if quota.course_id is not None:
            return "course"
        return "school" if quota.school_id is not None else "role"


def role_plural(role: str) -> str:
    return f"{Role(role).label.lower()}s" if role else "everyone"


# --- usage ---------------------------------------------------------------------------------


#: What a room counts for each owner: `{owner_id: {usage field: amount}}` for the ids given.
UsageSource = Callable[[list[int]], Iterable[tuple[int, dict[str, int]]]]

_USAGE_SOURCES: list[UsageSource] = []


def usage_source_register(source: UsageSource) -> None:
    """Rooms that own things people use (desktops, templates, media) count them here.

    People sit below those rooms, so they register their counts at start-up (their
    AppConfig.ready) instead of this module importing them.
    """
    if source not in _USAGE_SOURCES:
        _USAGE_SOURCES.append(source)


def usage_of(user_ids: Iterable[int]) -> dict[int, Usage]:
    """What each person uses now, in a fixed number of queries whatever their number."""
    ids = list(user_ids)
    totals: dict[int, dict[str, int]] = {user_id: defaultdict(int) for user_id in ids}
    for source in _USAGE_SOURCES:
        for owner_id, amounts in source(ids):
            owner = totals[owner_id]
            for name, value in amounts.items():
                owner[name] += value or 0
    return {user_id: Usage(**values) for user_id, values in totals.items()}


# --- limits --------------------------------------------------------------------------------


def limits_for(users: Sequence[User], *, course: Course | None = None) -> dict[int, list[Limit]]:
    """The limits that apply to each person, by the precedence in this module's docstring.

    `course` is the course the action is about; people who are not in it (an admin's own
    desktop in a course, say) fall back to their own courses.
    """
    user_ids = [user.pk for user in users]
    memberships: dict[int, dict[int, str]] = defaultdict(dict)  # user -> course -> role
    for membership in CourseMembership.objects.filter(user_id__in=user_ids):
        memberships[membership.user_id][membership.course_id] = membership.role
    course_ids = {course_id for roles in memberships.values() for course_id in roles}
    school_ids = {user.school_id for user in users if user.school_id is not None}
    roles = {user.role for user in users}
    quotas = list(
        Quota.objects.filter(
            Q(user_id__in=user_ids)
            | Q(course_id__in=course_ids)
            | Q(school_id__in=school_ids)
            | Q(user__isnull=True, course__isnull=True, school__isnull=True, role__in=roles)
        ).select_related("course", "school")
    )
    by_user = {quota.user_id: quota for quota in quotas if quota.user_id is not None}
    by_course = {
        (quota.course_id, quota.role): quota for quota in quotas if quota.course_id is not None
    }
    by_school = {
        (quota.school_id, quota.role): quota for quota in quotas if quota.school_id is not None
    }
    by_role = {
        quota.role: quota
        for quota in quotas
        if quota.user_id is None and quota.course_id is None and quota.school_id is None
    }

    result: dict[int, list[Limit]] = {}
    for user in users:
        if user.is_admin:
            result[user.pk] = []
            continue
        own_courses = memberships.get(user.pk, {})
        if course is not None and course.pk in own_courses:
            contexts = {course.pk: own_courses[course.pk]}
        else:
            contexts = own_courses
        limits: list[Limit] = []
        for kind in KINDS:
            limit = _resolve(
                kind,
                user=user,
                own=by_user.get(user.pk),
                courses=[
                    (by_course.get((course_id, role)), by_course.get((course_id, "")), role)
                    for course_id, role in contexts.items()
                ],
                school=[
                    by_school.get((user.school_id, user.role)),
                    by_school.get((user.school_id, "")),
                ]
                if user.school_id is not None
                else [],
                default=by_role.get(user.role),
            )
            if limit is not None:
                limits.append(limit)
        result[user.pk] = limits
    return result


def _resolve(
    kind: LimitKind,
    *,
    user: User,
    own: Quota | None,
    courses: list[tuple[Quota | None, Quota | None, str]],
    school: list[Quota | None],
    default: Quota | None,
) -> Limit | None:
    def set_here(quota: Quota | None) -> bool:
        return quota is not None and getattr(quota, kind.field) is not None

    def value(quota: Quota) -> int:
        return kind.from_quota(getattr(quota, kind.field))

    if own is not None and set_here(own):
        return Limit(kind, value(own), own, None, user.role)
    # Per course: its rule for the person's role, else for everyone; then the most generous.
    course_limits = []
    for for_role, for_everyone, role in courses:
        quota = for_role if set_here(for_role) else for_everyone
        if quota is not None and set_here(quota):
            course_limits.append(Limit(kind, value(quota), quota, quota.course, role))
    if course_limits:
        return max(course_limits, key=lambda limit: limit.allowed)
    for quota in (*school, default):
        if quota is not None and set_here(quota):
            return Limit(kind, value(quota), quota, None, user.role)
    return None


# --- the check -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Excess:
    """One limit an action would break, with the numbers."""

    user: User
    limit: Limit
    in_use: int
    requested: int

    def message(self, *, actor: User | None) -> str:
        own = actor is None or actor.pk == self.user.pk
        kind = self.limit.kind
        subject = "you" if own else self.user.get_username()
        allowed = self.limit.allowed
        text = (
            f"{self.limit.scope_phrase(own=own)} allows {kind.amount(allowed)} "
            f"{kind.noun_for(allowed)}{self.limit.per_phrase()}; "
        )
        if kind.name in ("vcpus", "memory", "disk"):
            text += f"{subject} {'use' if own else 'uses'} {kind.amount(self.in_use)}"
        else:
            running = " running" if kind.name == "running" else ""
            text += f"{subject} {'have' if own else 'has'} {self.in_use}{running}"
        if self.requested > 1 or (kind.name in ("vcpus", "memory", "disk") and self.requested):
            text += f" and this needs {kind.amount(self.requested)} more"
        return text + "."

    def extra(self) -> dict[str, object]:
        quota = self.limit.quota
        scope_name = str(quota.user or quota.course or quota.school or quota.role)
        return {
            "limit": self.limit.kind.name,
            "scope": self.limit.scope,
            "scope_name": scope_name,
            "allowed": self.limit.allowed,
            "in_use": self.in_use,
            "requested": self.requested,
            "user": self.user.get_username(),
        }


def _excesses(user: User, limits: list[Limit], usage: Usage, change: QuotaChange) -> list[Excess]:
    adds_storage = bool(change.desktops or change.templates or change.media or change.disk_bytes)
    found = []
    for limit in limits:
        requested = change.value(limit.kind)
        if not requested and not (limit.kind.name == "disk" and adds_storage):
            continue
        in_use = usage.value(limit.kind)
        if in_use + requested > limit.allowed:
            found.append(Excess(user, limit, in_use, requested))
    return found


def _lock(user_ids: list[int]) -> None:
    if transaction.get_connection().in_atomic_block:
        list(User.objects.select_for_update().filter(pk__in=user_ids).values_list("pk"))


def quota_check(
    *, owner: User, change: QuotaChange, course: Course | None = None, actor: User | None = None
) -> None:
    """Raise QuotaExceededError if `change` would take `owner` over one of their limits."""
    quota_check_many(owners=[owner], change=change, course=course, actor=actor)


def quota_check_many(
    *,
    owners: Sequence[User],
    change: QuotaChange,
    course: Course | None = None,
    actor: User | None = None,
) -> None:
    """Check the same change for many people at once (a class); nothing is created if any
    of them would go over, and the error names each of them."""
    owners = [owner for owner in owners if not owner.is_admin]
    if not owners:
        return
    _lock([owner.pk for owner in owners])
    limits = limits_for(owners, course=course)
    if not any(limits.values()):
        return
    usage = usage_of([owner.pk for owner in owners])
    excesses = [
        excess
        for owner in owners
        for excess in _excesses(owner, limits[owner.pk], usage[owner.pk], change)
    ]
    if not excesses:
        return
    if len(owners) == 1:
        first = excesses[0]
        raise QuotaExceededError(
            first.message(actor=actor),
            extra={**first.extra(), "exceeded": [excess.extra() for excess in excesses]},
        )
    people = sorted({excess.user.get_username() for excess in excesses})
    shown = [f"{excess.user.get_username()}: {excess.message(actor=actor)}" for excess in excesses]
    hidden = len(shown) - NAMES_SHOWN
    raise QuotaExceededError(
        f"Nothing was created: {len(people)} of {len(owners)} people would go over a quota. "
        + " ".join(shown[:NAMES_SHOWN])
        + (f" And {hidden} more." if hidden > 0 else ""),
        extra={"users": people, "exceeded": [excess.extra() for excess in excesses]},
    )


# --- what admins see -------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageLine:
    """One row of a person's usage against their limits."""

    kind: LimitKind
    in_use: int
    allowed: int | None
    set_by: str

    @property
    def in_use_text(self) -> str:
        return self.kind.amount(self.in_use)

    @property
    def allowed_text(self) -> str:
        return "unlimited" if self.allowed is None else self.kind.amount(self.allowed)

    @property
    def over(self) -> bool:
        return self.allowed is not None and self.in_use > self.allowed

    @property
    def full(self) -> bool:
        return self.allowed is not None and self.in_use >= self.allowed


def quota_report(
    users: Sequence[User], *, course: Course | None = None
) -> dict[int, list[UsageLine]]:
    """Usage against limits for each person, for the admin: the limits of `course` when
    given (what a desktop in it may use), else those outside any one course."""
    limits = limits_for(users, course=course)
    usage = usage_of([user.pk for user in users])
    report: dict[int, list[UsageLine]] = {}
    for user in users:
        by_kind = {limit.kind.name: limit for limit in limits[user.pk]}
        lines = []
        for kind in KINDS:
            limit = by_kind.get(kind.name)
            set_by = (
                "administrator: never limited"
                if user.is_admin
                else (limit.quota.scope_label if limit else "not set")
            )
            lines.append(
                UsageLine(
                    kind=kind,
                    in_use=usage[user.pk].value(kind),
                    allowed=limit.allowed if limit else None,
                    set_by=set_by,
                )
            )
        report[user.pk] = lines
    return report
