"""Reads about templates that several callers need."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from accounts.models import User
from templates_app.choices import TemplateStatus
from templates_app.models import Template


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


def template_is_visible_to(template: Template, user: User) -> bool:
    return templates_visible_to(user).filter(pk=template.pk).exists()


def template_dependants(template: Template) -> dict[str, list[str]]:
    """What keeps a template (and its disk) from being deleted, by kind, as names."""
    from desktops.models import Desktop

    desktops = Desktop.objects.filter(template=template).order_by("name")
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
