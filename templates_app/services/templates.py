"""Templates: registering base images, sharing, the recycle bin and purging it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import ProtectedError
from django.utils import timezone

from accounts.models import Course, User
from accounts.permissions import courses_visible_to, users_visible_to
from hypervisors.choices import PoolPurpose
from hypervisors.services.disks import (
    disk_import,
)
from hypervisors.services.pools import pool_for
from isard.core.errors import ApplicationError, ConflictError, PermissionDeniedError
from templates_app.choices import TemplateStatus
from templates_app.models import HardwareProfile, Template
from templates_app.permissions import can_manage_template
from templates_app.selectors import template_dependants
from templates_app.services.transitions import template_record_created, template_transition


def template_register_base(
    *,
    name: str,
    image: Path,
    hardware: HardwareProfile,
    owner: User | None = None,
    shared_with_everyone: bool = True,
    description: str = "",
) -> Template:
    """Copy an existing disk image into the base pool and offer it as a root template."""
    if not image.exists():
        raise ApplicationError(f"The image {image} does not exist.")
    disk = disk_import(source=image, pool=pool_for(PoolPurpose.BASE))
    template = Template.objects.create(
        name=name,
        description=description,
        owner=owner,
        disk=disk,
        hardware=hardware,
        status=TemplateStatus.READY,
        shared_with_everyone=shared_with_everyone,
    )
    template_record_created(template, actor=owner)
    return template


def template_delete(*, actor: User, template: Template) -> Template:
    """Move a template to the recycle bin, unless anything depends on it."""
    if not can_manage_template(actor, template):
        raise PermissionDeniedError("This template is not yours.")
    dependants = template_dependants(template)
    if any(dependants.values()):
        blocking = ", ".join(f"{len(names)} {kind}" for kind, names in dependants.items() if names)
        raise ConflictError(
            f"The template “{template.name}” cannot be deleted: {blocking} depend on it "
            f"({'; '.join(name for names in dependants.values() for name in names[:10])}).",
            extra={"dependants": dependants},
        )
    template_transition(
        template=template, to=TemplateStatus.DELETED, actor=actor, deleted_at=timezone.now()
    )
    template.refresh_from_db()
    return template


def template_restore(*, actor: User, template: Template) -> Template:
    if not can_manage_template(actor, template):
        raise PermissionDeniedError("This template is not yours.")
    if template.status != TemplateStatus.DELETED:
        raise ConflictError(f"The template “{template.name}” is not in the recycle bin.")
    template_transition(template=template, to=TemplateStatus.READY, actor=actor, deleted_at=None)
    template.refresh_from_db()
    return template


def template_set_sharing(
    *,
    actor: User,
    template: Template,
    everyone: bool | None = None,
    courses: Sequence[Course] | None = None,
    users: Sequence[User] | None = None,
) -> Template:
    """Choose who may create desktops from the template (None leaves a part unchanged).

    A teacher shares with the courses they are in and the people they can see (their
    students); only an administrator shares with everyone, across every school.
    """
    if not can_manage_template(actor, template):
        raise PermissionDeniedError("This template is not yours.")
    if everyone and not actor.is_admin and not template.shared_with_everyone:
        raise PermissionDeniedError("Only administrators share a template with everyone.")
    if courses is not None:
        allowed = set(courses_visible_to(actor).values_list("pk", flat=True))
        unknown = sorted(c.pk for c in courses if c.pk not in allowed)
        if unknown:
            raise ApplicationError(
                "You cannot share with those courses.", extra={"courses": unknown}
            )
    if users is not None:
        allowed = set(users_visible_to(actor).values_list("pk", flat=True))
        unknown = sorted(u.pk for u in users if u.pk not in allowed)
        if unknown:
            raise ApplicationError("You cannot share with those people.", extra={"users": unknown})
    with transaction.atomic():
        if everyone is not None:
            Template.objects.filter(pk=template.pk).update(shared_with_everyone=everyone)
        if courses is not None:
            template.shared_courses.set(courses)
        if users is not None:
            template.shared_users.set(users)
    template.refresh_from_db()
    return template


def template_purge(*, template: Template) -> None:
    """Remove a recycled template and its disk for good; refused while anything depends on it."""
    if template.status != TemplateStatus.DELETED:
        raise ConflictError(f"The template “{template.name}” is not in the recycle bin.")
    disk = template.disk
    try:
        with transaction.atomic():
            template.delete()
            if disk is not None and not disk.templates.exists():
                disk.delete()
            else:
                disk = None
    except ProtectedError as error:
        raise ConflictError(
            f"The template “{template.name}” still has dependants.",
            extra={"dependants": template_dependants(template)},
        ) from error
    if disk is not None:
        Path(disk.path).unlink(missing_ok=True)


def templates_purge_expired(*, now: datetime | None = None) -> int:
    """Purge templates that waited in the recycle bin longer than the retention."""
    now = now or timezone.now()
    limit = now - timedelta(days=settings.ISARD_RECYCLE_RETENTION_DAYS)
    purged = 0
    for template in Template.objects.filter(status=TemplateStatus.DELETED, deleted_at__lt=limit):
        try:
            template_purge(template=template)
            purged += 1
        except ConflictError:
            pass  # something was built on it after all: it stays
    return purged
