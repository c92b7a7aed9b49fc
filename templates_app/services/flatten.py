"""Flattening a template: its whole chain copied into one standalone disk, with progress."""

from __future__ import annotations

import os
import time
from pathlib import Path

from django.db import transaction

from accounts.models import User
from accounts.quotas import QuotaChange, quota_check
from hypervisors import qemu_img
from hypervisors.choices import PoolPurpose
from hypervisors.selectors import storage_pool_directories
from hypervisors.services.disks import (
    disk_path,
    disk_record,
)
from hypervisors.services.pools import pool_for
from isard.core.errors import ApplicationError, ConflictError, PermissionDeniedError
from isard.core.tasks import send_after_commit
from isard.core.text import name_check
from templates_app import task_calls
from templates_app.choices import TemplateStatus
from templates_app.models import Template
from templates_app.permissions import can_manage_template
from templates_app.services.transitions import template_record_created, template_transition


def template_flatten(*, actor: User, template: Template, name: str) -> Template:
    """Start copying a template's whole chain into one standalone disk (a long task).

    The new template has no parent: it survives even if the chain it came from is purged,
    at the cost of a full copy of the disk.
    """
    if not actor.is_teacher:
        raise PermissionDeniedError("Only teachers can make templates.")
    if not can_manage_template(actor, template):
        raise PermissionDeniedError("This template is not yours.")
    if template.status != TemplateStatus.READY or template.disk is None:
        raise ConflictError(f"The template “{template.name}” is not ready.")
    name = name_check(name.strip())
    if not name:
        raise ApplicationError("A template needs a name.")

    with transaction.atomic():
        quota_check(owner=actor, actor=actor, change=QuotaChange(templates=1))
        flat = Template.objects.create(
            name=name,
            description=f"A standalone copy of “{template.name}”.",
            owner=actor,
            hardware=template.hardware,
            status=TemplateStatus.CREATING,
        )
        template_record_created(flat, actor=actor)
        send_after_commit(task_calls.flatten_template(template_id=flat.pk, source_id=template.pk))
    return flat


def template_flatten_run(*, template_id: int, source_id: int) -> Template:
    """Run `qemu-img convert` of the source chain, recording progress as it goes."""
    template = Template.objects.get(pk=template_id)
    source = Template.objects.select_related("disk").get(pk=source_id)
    if template.status != TemplateStatus.CREATING or source.disk is None:
        return template
    pool = pool_for(PoolPurpose.TEMPLATES)
    destination = disk_path(pool)
    last = [-1.0, 0.0]  # percent and time of the last database write

    def on_progress(percent: float) -> None:
        # One write per whole percent at most, and never more than 4 a second.
        now = time.monotonic()
        if int(percent) > last[0] and now - last[1] > 0.25:
            Template.objects.filter(pk=template.pk).update(progress_percent=int(percent))
            last[0], last[1] = int(percent), now

    try:
        qemu_img.convert(
            Path(source.disk.path),
            destination,
            storage_pools=storage_pool_directories(),
            on_progress=on_progress,
        )
        os.chmod(destination, 0o444)
        disk = disk_record(pool=pool, path=destination, read_only=True)
    except (qemu_img.QemuImgError, OSError) as error:
        destination.unlink(missing_ok=True)
        template_transition(
            template=template, to=TemplateStatus.FAILED, reason=f"Could not copy the disk: {error}"
        )
        template.refresh_from_db()
        return template
    template_transition(template=template, to=TemplateStatus.READY, disk=disk, progress_percent=100)
    template.refresh_from_db()
    return template
