"""Writes for templates: registering base images and turning desktops into templates."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from django.db import transaction
from django.db.models import ProtectedError
from django.utils import timezone

from accounts.models import User
from hypervisors import qemu_img
from hypervisors.choices import PoolPurpose
from hypervisors.models import Disk
from hypervisors.services import (
    disk_create_overlay,
    disk_import,
    disk_path,
    disk_refresh_size,
    pool_for,
)
from isard.exceptions import ApplicationError, ConflictError, PermissionDeniedError
from templates_app.choices import TemplateStatus
from templates_app.models import HardwareProfile, Template
from templates_app.selectors import template_dependants


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
    return Template.objects.create(
        name=name,
        description=description,
        owner=owner,
        disk=disk,
        hardware=hardware,
        status=TemplateStatus.READY,
        shared_with_everyone=shared_with_everyone,
    )


def template_from_desktop(
    *, actor: User, desktop_id: int, name: str, description: str = ""
) -> Template:
    """Start turning a stopped desktop into a template (the work is a task).

    The desktop's own disk becomes the template's, read-only, and the desktop continues on
    a fresh overlay above it: no data is copied, and the teacher keeps working.
    """
    from desktops.choices import DesktopStatus
    from desktops.models import Desktop
    from desktops.services import _schedule, desktop_transition

    desktop = Desktop.objects.select_related("template", "hardware").get(pk=desktop_id)
    if desktop.owner_id != actor.pk and not actor.is_admin:
        raise PermissionDeniedError("Only the desktop's owner can make a template of it.")
    if not actor.is_teacher:
        raise PermissionDeniedError("Only teachers can make templates.")
    name = name.strip()
    if not name:
        raise ApplicationError("A template needs a name.")
    if desktop.status != DesktopStatus.STOPPED:
        raise ConflictError(f"Stop the desktop “{desktop.name}” before making a template of it.")
    with transaction.atomic():
        desktop_transition(desktop=desktop, to=DesktopStatus.CREATING_TEMPLATE, actor=actor)
        template = Template.objects.create(
            name=name,
            description=description,
            owner=actor,
            parent=desktop.template,
            hardware=desktop.hardware,
            status=TemplateStatus.CREATING,
        )
        _schedule("templates_app.tasks.make_template", template.pk, desktop.pk)
    return template


def template_finish_from_desktop(*, template_id: int, desktop_id: int) -> Template:
    """Move the desktop's disk under the template and give the desktop a new overlay."""
    from desktops.choices import DesktopStatus
    from desktops.models import Desktop
    from desktops.services import desktop_transition

    template = Template.objects.get(pk=template_id)
    desktop = Desktop.objects.select_related("disk").get(pk=desktop_id)
    if (
        template.status != TemplateStatus.CREATING
        or desktop.status != DesktopStatus.CREATING_TEMPLATE
    ):
        return template
    old_disk = desktop.disk
    if old_disk is None:
        raise ConflictError("The desktop has no disk.")
    old_path = Path(old_disk.path)
    templates_pool = pool_for(PoolPurpose.TEMPLATES)
    new_path = disk_path(templates_pool)
    try:
        shutil.move(old_path, new_path)
        os.chmod(new_path, 0o444)
        Disk.objects.filter(pk=old_disk.pk).update(
            pool=templates_pool, path=str(new_path), read_only=True
        )
        old_disk.refresh_from_db()
        try:
            overlay = disk_create_overlay(parent=old_disk)
        except Exception:
            # Put the disk back exactly where the desktop expects it.
            os.chmod(new_path, 0o644)
            shutil.move(new_path, old_path)
            Disk.objects.filter(pk=old_disk.pk).update(
                pool=desktop.disk.pool if desktop.disk else templates_pool,
                path=str(old_path),
                read_only=False,
            )
            raise
    except (OSError, ApplicationError, qemu_img.QemuImgError) as error:
        message = getattr(error, "message", str(error))
        Template.objects.filter(pk=template.pk).update(
            status=TemplateStatus.FAILED, status_reason=message
        )
        desktop_transition(
            desktop=desktop, to=DesktopStatus.STOPPED, reason=f"Template failed: {message}"
        )
        template.refresh_from_db()
        return template
    disk_refresh_size(disk=old_disk)
    with transaction.atomic():
        Template.objects.filter(pk=template.pk).update(disk=old_disk, status=TemplateStatus.READY)
        desktop_transition(
            desktop=desktop,
            to=DesktopStatus.STOPPED,
            reason=f"Now based on the template “{template.name}”.",
            disk=overlay,
            template=template,
        )
    template.refresh_from_db()
    return template


def template_delete(*, actor: User, template: Template) -> Template:
    """Move a template to the recycle bin, unless anything depends on it."""
    if template.owner_id != actor.pk and not actor.is_admin:
        raise PermissionDeniedError("This template is not yours.")
    dependants = template_dependants(template)
    if dependants["desktops"] or dependants["templates"]:
        count = len(dependants["desktops"]) + len(dependants["templates"])
        raise ConflictError(
            f"The template “{template.name}” cannot be deleted: {count} desktop(s) or "
            "template(s) are built on it.",
            extra={"dependants": dependants},
        )
    Template.objects.filter(pk=template.pk).update(
        status=TemplateStatus.DELETED, deleted_at=timezone.now()
    )
    template.refresh_from_db()
    return template


def template_restore(*, actor: User, template: Template) -> Template:
    if template.owner_id != actor.pk and not actor.is_admin:
        raise PermissionDeniedError("This template is not yours.")
    if template.status != TemplateStatus.DELETED:
        raise ConflictError(f"The template “{template.name}” is not in the recycle bin.")
    Template.objects.filter(pk=template.pk).update(status=TemplateStatus.READY, deleted_at=None)
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
