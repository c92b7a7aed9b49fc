"""Reads about templates and media that several callers need."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from accounts.models import User
from isard.core.errors import NotFoundError
from templates_app.choices import TemplateStatus
from templates_app.models import Media, Template


def templates_visible_to(user: User) -> QuerySet[Template]:
    """Ready templates the user may create desktops from."""
    ready = Template.objects.filter(status=TemplateStatus.READY, deleted_at__isnull=True)
    if user.is_admin:
        return ready
    return ready.filter(
        Q(shared_with_everyone=True)
        | Q(owner=user)
        | Q(shared_users=user)
        | Q(shared_courses__members=user)
    ).distinct()


def media_owned_by(user: User, media_id: int) -> Media:
    """The media if `user` owns it (or is an administrator); else, as if it did not exist."""
    media = Media.objects.filter(pk=media_id).first()
    if media is None or (media.owner_id != user.pk and not user.is_admin):
        raise NotFoundError("No such media.")
    return media


def template_is_visible_to(template: Template, user: User) -> bool:
    return templates_visible_to(user).filter(pk=template.pk).exists()


def template_dependants(template: Template) -> dict[str, list[str]]:
    """What keeps a template (and its disk) from being deleted, by kind, as names.

    Desktops and deployments are read through their relations to the template: this room
    sits below the desktops' and never imports it.
    """
    desktops = template.desktops.order_by("name")
    children = Template.objects.filter(parent=template).order_by("name")
    return {
        "desktops": [
            f"{d.name} ({d.owner.get_username()})" for d in desktops.select_related("owner")
        ],
        "templates": [t.name for t in children],
        "deployments": [
            f"{d.name} ({d.course.name})"
            for d in template.deployments.filter(deleted_at__isnull=True).select_related("course")
        ],
    }
