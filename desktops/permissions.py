"""Which desktops a person may see and act on: the desktops' part of the one policy.

The people's part (roles, courses, schools) is `accounts.permissions`; the rules here are
written in its terms, once, as a `Q`, so that a list and a single check never disagree.
"""

from __future__ import annotations

from django.db.models import Q, QuerySet

from accounts.models import User
from accounts.permissions import courses_taught_by, is_manager, sees_own_desktops_only
from desktops.models import Desktop


def _own_desktops_q(actor: User) -> Q:
    """My desktops, less those of a deployment my teacher has hidden (shown again later)."""
    return Q(owner=actor) & ~Q(deployment__visible=False)


def _desktops_q(actor: User) -> Q | None:
    """The desktops the person may see and act on; None means all of them."""
    if actor.is_admin:
        return None
    if is_manager(actor):
        return Q(owner=actor) | Q(owner__school_id=actor.school_id)
    if sees_own_desktops_only(actor):
        return _own_desktops_q(actor)
    return _own_desktops_q(actor) | Q(course__in=courses_taught_by(actor))


def desktops_visible_to(actor: User) -> QuerySet[Desktop]:
    """Desktops the person may see and act on (owner, their course's teacher, manager).

    No DISTINCT: every rule above follows single-valued relations only (the owner, their
    school, the deployment) or tests the course against a subquery, so no desktop can
    come out twice; a rule that joins a many-valued relation must bring it back. (DISTINCT
    over every column made the database sort each list, and wrapped its count in a
    subquery.)
    """
    rule = _desktops_q(actor)
    if rule is None:
        return Desktop.objects.all()
    if sees_own_desktops_only(actor):
        # Through the person's own desktops: each comes with its owner already in hand
        # (no join, no query per desktop to show whose it is).
        return actor.desktops.filter(rule)
    return Desktop.objects.filter(rule)


def can_act_on_desktop(actor: User, desktop: Desktop) -> bool:
    if actor.is_admin or (desktop.owner_id == actor.pk and desktop.deployment_id is None):
        return True
    return desktops_visible_to(actor).filter(pk=desktop.pk).exists()
