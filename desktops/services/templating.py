"""Making a template of a desktop: the desktop's disk becomes the template's, read-only,
and the desktop goes on working on a fresh overlay above it (no data is copied)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from django.db import transaction

from accounts.models import User
from accounts.quotas import QuotaChange, quota_check
from desktops import task_calls
from desktops.choices import DesktopStatus
from desktops.models import Desktop
from desktops.services.transitions import desktop_transition, undo_transition
from hypervisors import qemu_img
from hypervisors.choices import PoolPurpose
from hypervisors.models import Disk
from hypervisors.services.disks import (
    disk_create_overlay,
    disk_path,
    disk_refresh_size,
)
from hypervisors.services.pools import pool_for
from isard.core.errors import ApplicationError, ConflictError, PermissionDeniedError
from isard.core.tasks import send_after_commit
from isard.core.text import name_check
from templates_app.choices import TemplateStatus
from templates_app.models import Template
from templates_app.services.transitions import template_record_created, template_transition


def template_from_desktop(
    *, actor: User, desktop_id: int, name: str, description: str = ""
) -> Template:
    """Start turning a stopped desktop into a template (the work is a task).

    The desktop's own disk becomes the template's, read-only, and the desktop continues on
    a fresh overlay above it: no data is copied, and the teacher keeps working.
    """
    desktop = Desktop.objects.select_related("template", "hardware").get(pk=desktop_id)
    if desktop.owner_id != actor.pk and not actor.is_admin:
        raise PermissionDeniedError("Only the desktop's owner can make a template of it.")
    if not actor.is_teacher:
        raise PermissionDeniedError("Only teachers can make templates.")
    name = name_check(name.strip())
    if not name:
        raise ApplicationError("A template needs a name.")
    if desktop.status != DesktopStatus.STOPPED:
        raise ConflictError(f"Stop the desktop “{desktop.name}” before making a template of it.")
    with transaction.atomic():
        quota_check(owner=actor, actor=actor, change=QuotaChange(templates=1))
        desktop_transition(desktop=desktop, to=DesktopStatus.CREATING_TEMPLATE, actor=actor)
        template = Template.objects.create(
            name=name,
            description=description,
            owner=actor,
            parent=desktop.template,
            hardware=desktop.hardware,
            status=TemplateStatus.CREATING,
        )
        template_record_created(template, actor=actor)
        put_back = undo_transition(desktop, DesktopStatus.STOPPED)

        def undo(reason: str) -> None:
            # The task queue is unreachable: nothing was made, so the new row goes and
            # the desktop is stopped again, as it was (see desktops.services.send_task).
            Template.objects.filter(pk=template.pk, status=TemplateStatus.CREATING).delete()
            put_back(reason)

        send_after_commit(
            task_calls.make_template(template_id=template.pk, desktop_id=desktop.pk), undo=undo
        )
    return template


def template_finish_from_desktop(*, template_id: int, desktop_id: int) -> Template:
    """Move the desktop's disk under the template and give the desktop a new overlay."""

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
        template_transition(template=template, to=TemplateStatus.FAILED, reason=message)
        desktop_transition(
            desktop=desktop, to=DesktopStatus.STOPPED, reason=f"Template failed: {message}"
        )
        template.refresh_from_db()
        return template
    disk_refresh_size(disk=old_disk)
    with transaction.atomic():
        template_transition(template=template, to=TemplateStatus.READY, disk=old_disk)
        desktop_transition(
            desktop=desktop,
            to=DesktopStatus.STOPPED,
            reason=f"Now based on the template “{template.name}”.",
            disk=overlay,
            template=template,
        )
    template.refresh_from_db()
    return template
