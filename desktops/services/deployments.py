"""Deployments: a teacher gives a template to a class, and acts on all its desktops at once.

Every write checks its `actor` with `can_manage_deployment`: the deployment's owner, its
co-teachers (who teach the course), the course's school manager and admins. Desktops are
made in bulk (`desktops_create_bulk`: one transaction, one provisioning task for the
class), and every status change goes through the ordinary desktop services, so the
transition table, the audit rows and the websocket pushes are the same as for one desktop.
A bulk action never stops half-way on one desktop's error: it reports, per desktop, what
was refused and why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from accounts.choices import CourseRole
from accounts.models import Course, User
from accounts.permissions import can_manage_course, is_manager
from desktops.choices import ACTIVE_STATUSES, DesktopStatus
from desktops.models import Deployment, Desktop
from desktops.services.lifecycle import desktop_shutdown, desktop_start, desktop_stop
from desktops.services.provisioning import desktops_create_bulk
from desktops.services.recycle_bin import desktop_delete
from isard.core.errors import (
    ApplicationError,
    ConflictError,
    PermissionDeniedError,
    TaskQueueUnavailableError,
)
from isard.core.text import name_check, text_check
from templates_app.choices import TemplateStatus
from templates_app.models import Template
from templates_app.selectors import template_is_visible_to

S = DesktopStatus

#: A desktop in one of these is not (or no longer) the student's desktop of a deployment.
GONE_STATUSES = frozenset({S.DELETING, S.DELETED})


@dataclass
class BulkOutcome:
    """What a bulk action did: the desktops it changed and those it had to leave alone."""

    deployment: Deployment
    changed: list[Desktop] = field(default_factory=list)
    refused: list[tuple[Desktop, str]] = field(default_factory=list)


# --- who may see and act ------------------------------------------------------------------


def _deployments_q(actor: User) -> Q | None:
    if actor.is_admin:
        return None
    if is_manager(actor):
        return Q(course__school_id=actor.school_id) | Q(owner=actor)
    return Q(owner=actor) | Q(co_teachers=actor)


def deployments_visible_to(actor: User) -> QuerySet[Deployment]:
    """Deployments the person may see and act on."""
    deployments = Deployment.objects.all()
    rule = _deployments_q(actor)
    return deployments if rule is None else deployments.filter(rule).distinct()


def can_manage_deployment(actor: User, deployment: Deployment) -> bool:
    if actor.is_admin or deployment.owner_id == actor.pk:
        return True
    return deployments_visible_to(actor).filter(pk=deployment.pk).exists()


def _check_can_manage(actor: User, deployment: Deployment) -> None:
    if not can_manage_deployment(actor, deployment):
        raise PermissionDeniedError("This deployment is not yours.")


def desktops_hidden_from(actor: User) -> QuerySet[Desktop]:
    """The actor's own desktops that a hidden deployment keeps out of their sight.

    A teacher who manages the deployment still sees their own desktop in it.
    """
    hidden = Desktop.objects.filter(owner=actor, deployment__visible=False)
    return hidden.exclude(deployment__in=deployments_visible_to(actor))


# --- students and co-teachers --------------------------------------------------------------


def _course_students(course: Course) -> QuerySet[User]:
    return User.objects.filter(
        memberships__course=course, memberships__role=CourseRole.STUDENT
    ).distinct()


def deployment_students(deployment: Deployment) -> QuerySet[User]:
    """Who should have a desktop: the course's students, or those chosen still in it."""
    students = _course_students(deployment.course)
    if not deployment.whole_course:
        students = students.filter(pk__in=deployment.students.values("pk"))
    return students.order_by("username", "pk")


def _check_students(course: Course, students: Iterable[User]) -> list[User]:
    members = set(_course_students(course).values_list("pk", flat=True))
    chosen = list({student.pk: student for student in students}.values())
    strangers = sorted(s.get_username() for s in chosen if s.pk not in members)
    if strangers:
        raise ApplicationError(
            f"Not students of the course “{course.name}”: {', '.join(strangers)}.",
            extra={"users": strangers},
        )
    return chosen


def _check_co_teachers(course: Course, users: Iterable[User]) -> list[User]:
    teachers = set(
        course.memberships.filter(role=CourseRole.TEACHER).values_list("user_id", flat=True)
    )
    chosen = list({user.pk: user for user in users}.values())
    strangers = sorted(u.get_username() for u in chosen if u.pk not in teachers)
    if strangers:
        raise ApplicationError(
            f"Co-teachers must teach the course “{course.name}”: {', '.join(strangers)}.",
            extra={"users": strangers},
        )
    return chosen


def _check_name(name: str) -> str:
    name = name_check(name.strip())
    if not name or len(name) > 200:
        raise ApplicationError("A deployment needs a name of at most 200 characters.")
    return name


def _check_template(actor: User, template: Template) -> None:
    if template.status != TemplateStatus.READY or template.disk is None:
        raise ConflictError(f"The template “{template.name}” is not ready.")
    if not template_is_visible_to(template, actor):
        raise PermissionDeniedError(f"The template “{template.name}” is not shared with you.")


# --- create, and the desktops of students who joined later --------------------------------


def _create_desktops(
    *, actor: User, deployment: Deployment, owners: Sequence[User]
) -> list[Desktop]:
    """One desktop per owner, in bulk, linked to the deployment (inside a transaction)."""
    if not owners:
        return []
    desktops = desktops_create_bulk(
        actor=actor,
        template=deployment.template,
        owners=owners,
        name=deployment.name,
        course=deployment.course,
    )
    Desktop.objects.filter(pk__in=[d.pk for d in desktops]).update(
        deployment=deployment, volatile=deployment.volatile
    )
    for desktop in desktops:
        desktop.deployment = deployment
        desktop.volatile = deployment.volatile
    return desktops


def deployment_create(
    *,
    actor: User,
    course: Course,
    template: Template,
    name: str,
    description: str = "",
    students: Sequence[User] | None = None,
    co_teachers: Sequence[User] = (),
    visible: bool = True,
    volatile: bool = False,
) -> tuple[Deployment, list[Desktop]]:
    """Give `template` to every student of `course` (or to `students`): one request.

    The desktops appear at once as "creating"; one task makes their disks and domains.
    """
    if not can_manage_course(actor, course):
        raise PermissionDeniedError("You can only deploy to a course you teach.")
    name = _check_name(name)
    _check_template(actor, template)
    chosen = None if students is None else _check_students(course, students)
    teachers = _check_co_teachers(course, co_teachers)
    with transaction.atomic():
        deployment = Deployment.objects.create(
            name=name,
            description=text_check(description),
            course=course,
            template=template,
            owner=actor,
            whole_course=chosen is None,
            visible=visible,
            volatile=volatile,
        )
        if chosen is not None:
            deployment.students.set(chosen)
        deployment.co_teachers.set(teachers)
        desktops = _create_desktops(
            actor=actor, deployment=deployment, owners=list(deployment_students(deployment))
        )
    return deployment, desktops


def deployment_missing_students(deployment: Deployment) -> list[User]:
    """Students who should have a desktop in the deployment and have none (joined later)."""
    have = Desktop.objects.filter(deployment=deployment).exclude(status__in=GONE_STATUSES)
    return list(deployment_students(deployment).exclude(pk__in=have.values("owner_id")))


def deployment_create_missing(*, actor: User, deployment: Deployment) -> BulkOutcome:
    """Desktops for the students who joined the course after the deployment was made."""
    _check_can_manage(actor, deployment)
    _check_not_deleted(deployment)
    _check_template(actor, deployment.template)
    with transaction.atomic():
        desktops = _create_desktops(
            actor=actor, deployment=deployment, owners=deployment_missing_students(deployment)
        )
    return BulkOutcome(deployment=deployment, changed=desktops)


def _check_not_deleted(deployment: Deployment) -> None:
    if deployment.deleted_at is not None:
        raise ConflictError(f"The deployment “{deployment.name}” is in the recycle bin.")


def deployment_desktops(deployment: Deployment) -> QuerySet[Desktop]:
    """The deployment's current desktops (not those deleted or being deleted)."""
    return (
        Desktop.objects.filter(deployment=deployment)
        .exclude(status__in=GONE_STATUSES)
        .select_related("owner")
        .order_by("owner__username", "pk")
    )


# --- acting on every desktop -----------------------------------------------------------------


def _each(
    *,
    deployment: Deployment,
    desktops: Iterable[Desktop],
    act: Callable[[Desktop], Desktop],
) -> BulkOutcome:
    outcome = BulkOutcome(deployment=deployment)
    queue_down: TaskQueueUnavailableError | None = None
    for desktop in desktops:
        if queue_down is not None:
            # Each try would wait for the broker's timeout again: a class of thirty would
            # hang the request. The rest are refused with the same reason at once.
            outcome.refused.append((desktop, queue_down.message))
            continue
        try:
            outcome.changed.append(act(desktop))
        except TaskQueueUnavailableError as error:
            queue_down = error
            outcome.refused.append((desktop, error.message))
        except ApplicationError as error:
            outcome.refused.append((desktop, error.message))
    return outcome


def deployment_start(*, actor: User, deployment: Deployment) -> BulkOutcome:
    """Start every stopped (or failed) desktop of the deployment; running ones stay as they are."""
    _check_can_manage(actor, deployment)
    _check_not_deleted(deployment)
    desktops = deployment_desktops(deployment).filter(status__in=[S.STOPPED, S.FAILED])
    return _each(
        deployment=deployment,
        desktops=desktops,
        act=lambda desktop: desktop_start(actor=actor, desktop=desktop),
    )


def deployment_stop(*, actor: User, deployment: Deployment, force: bool = False) -> BulkOutcome:
    """Shut down every running desktop (ACPI, forced after the timeout), or pull the plug."""
    _check_can_manage(actor, deployment)
    stop = desktop_stop if force else desktop_shutdown
    desktops = deployment_desktops(deployment).filter(status__in=ACTIVE_STATUSES)
    if not force:
        # Already on their way down: a second request would be refused, and is not needed.
        desktops = desktops.exclude(status__in=[S.SHUTTING_DOWN, S.STOPPING])
    return _each(
        deployment=deployment,
        desktops=desktops,
        act=lambda desktop: stop(actor=actor, desktop=desktop),
    )


def deployment_set_visible(*, actor: User, deployment: Deployment, visible: bool) -> BulkOutcome:
    """Show the desktops to their students, or hide them (which shuts them down)."""
    _check_can_manage(actor, deployment)
    _check_not_deleted(deployment)
    Deployment.objects.filter(pk=deployment.pk).update(visible=visible)
    deployment.visible = visible
    if visible:
        return BulkOutcome(deployment=deployment)
    return deployment_stop(actor=actor, deployment=deployment)


def deployment_set_co_teachers(
    *, actor: User, deployment: Deployment, co_teachers: Sequence[User]
) -> Deployment:
    """Replace the co-teachers: teachers of the course who may act on the deployment too."""
    _check_can_manage(actor, deployment)
    teachers = _check_co_teachers(deployment.course, co_teachers)
    deployment.co_teachers.set(teachers)
    return deployment


def deployment_update(
    *,
    actor: User,
    deployment: Deployment,
    name: str | None = None,
    description: str | None = None,
    volatile: bool | None = None,
) -> Deployment:
    """Rename or describe the deployment (its desktops keep their names until recreated),
    or make it volatile or persistent (its desktops follow from their next stop)."""
    _check_can_manage(actor, deployment)
    fields: dict[str, str | bool] = {}
    if name is not None:
        fields["name"] = _check_name(name)
    if description is not None:
        fields["description"] = text_check(description)
    if volatile is not None:
        fields["volatile"] = volatile
    if fields:
        with transaction.atomic():
            Deployment.objects.filter(pk=deployment.pk).update(**fields)
            if volatile is not None:
                Desktop.objects.filter(deployment=deployment).update(volatile=volatile)
        for key, value in fields.items():
            setattr(deployment, key, value)
    return deployment


def deployment_recreate(
    *,
    actor: User,
    deployment: Deployment,
    desktops: Sequence[Desktop] | None = None,
    template: Template | None = None,
) -> BulkOutcome:
    """Give students a fresh desktop from the deployment's (or a newer) template.

    Each old desktop goes to its owner's recycle bin (restorable until purged) and leaves
    the deployment; the new ones are made in bulk. Running desktops are refused: stop them
    first, so nobody loses work in the middle of typing.
    """
    _check_can_manage(actor, deployment)
    _check_not_deleted(deployment)
    if template is not None and template.pk != deployment.template_id:
        _check_template(actor, template)
    else:
        template = deployment.template
        _check_template(actor, template)
    current = deployment_desktops(deployment)
    targets = list(current if desktops is None else current.filter(pk__in=[d.pk for d in desktops]))
    if desktops is not None and len(targets) != len({d.pk for d in desktops}):
        raise ApplicationError("Some of those desktops are not in this deployment.")
    outcome = BulkOutcome(deployment=deployment)
    with transaction.atomic():
        if template.pk != deployment.template_id:
            Deployment.objects.filter(pk=deployment.pk).update(template=template)
            deployment.template = template
        owners: list[User] = []
        for desktop in targets:
            try:
                desktop_delete(actor=actor, desktop=desktop)
            except ApplicationError as error:
                outcome.refused.append((desktop, error.message))
                continue
            Desktop.objects.filter(pk=desktop.pk).update(deployment=None)
            owners.append(desktop.owner)
        still_students = set(deployment_students(deployment).values_list("pk", flat=True))
        owners = [owner for owner in owners if owner.pk in still_students]
        outcome.changed = _create_desktops(actor=actor, deployment=deployment, owners=owners)
    return outcome


def deployment_delete(*, actor: User, deployment: Deployment) -> BulkOutcome:
    """Move the deployment and all its desktops to the recycle bin.

    Refused while any of its desktops runs or is busy: stop them all first.
    """
    _check_can_manage(actor, deployment)
    _check_not_deleted(deployment)
    desktops = list(deployment_desktops(deployment))
    deletable = {S.STOPPED, S.FAILED, S.UNKNOWN}
    busy = [d for d in desktops if d.status not in deletable]
    if busy:
        raise ConflictError(
            f"Stop the deployment “{deployment.name}” first: {len(busy)} of its desktops "
            "are running or busy.",
            extra={"desktops": [d.pk for d in busy]},
        )
    with transaction.atomic():
        outcome = _each(
            deployment=deployment,
            desktops=desktops,
            act=lambda desktop: desktop_delete(actor=actor, desktop=desktop),
        )
        if outcome.refused:
            # Someone started one meanwhile: leaving the atomic block by raising rolls back,
            # so nothing is deleted rather than half the class.
            raise ConflictError(
                f"The deployment “{deployment.name}” changed meanwhile; try again.",
                extra={"desktops": [d.pk for d, _ in outcome.refused]},
            )
        now = timezone.now()
        Deployment.objects.filter(pk=deployment.pk).update(deleted_at=now)
        deployment.deleted_at = now
    return outcome
