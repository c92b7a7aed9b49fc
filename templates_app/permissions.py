"""Which templates and media a person may manage: the templates' part of the one policy.

The people's part (roles, schools) is `accounts.permissions`. Using a template (building a
desktop from it) is wider: `templates_app.selectors`.
"""

from __future__ import annotations

from typing import TypeVar

from django.db.models import Q, QuerySet

from accounts.choices import Role
from accounts.models import User
from accounts.permissions import is_manager
from templates_app.models import Media, Template

Owned = TypeVar("Owned", Template, Media)


def _managed_by(actor: User, rows: QuerySet[Owned]) -> QuerySet[Owned]:
    """One rule for templates and media: all (admins); their own and their school's
    (managers); their own (teachers); none (students)."""
    if actor.is_admin:
        return rows
    if is_manager(actor):
        return rows.filter(Q(owner=actor) | Q(owner__school_id=actor.school_id))
    if actor.role == Role.STUDENT:
        return rows.none()
    return rows.filter(owner=actor)


def templates_managed_by(actor: User) -> QuerySet[Template]:
    """Templates the person may edit, share, flatten and delete (not merely use)."""
    return _managed_by(actor, Template.objects.all())


def can_manage_template(actor: User, template: Template) -> bool:
    if actor.is_admin or (template.owner_id == actor.pk and actor.role != Role.STUDENT):
        return True
    return templates_managed_by(actor).filter(pk=template.pk).exists()


def media_managed_by(actor: User) -> QuerySet[Media]:
    """Install media the person may edit and delete: like templates."""
    return _managed_by(actor, Media.objects.all())


def templates_choosable(actor: User) -> QuerySet[Template]:
    """Templates the person may pick in an admin form: those they manage, and those shared
    with everyone."""
    return Template.objects.filter(
        Q(pk__in=templates_managed_by(actor).values("pk")) | Q(shared_with_everyone=True)
    )
