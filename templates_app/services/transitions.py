"""The one place a template's or media's status changes, with its event row.

The same mechanism as desktops' (`isard.core.transitions`): the declared tables in
`templates_app.choices`, a conditional UPDATE, an event row per change.
"""

from __future__ import annotations

from typing import Any

from accounts.models import User
from isard.core.transitions import Change, StateMachine
from templates_app.choices import (
    MEDIA_TRANSITIONS,
    TEMPLATE_TRANSITIONS,
    MediaStatus,
    TemplateStatus,
)
from templates_app.models import Media, MediaEvent, Template, TemplateEvent


def _template_event(change: Change[Template], actor: User | None) -> TemplateEvent:
    return TemplateEvent(
        template=change.instance,
        from_status=change.from_status,
        to_status=change.to_status,
        reason=change.reason,
        actor=actor,
    )


def _media_event(change: Change[Media], actor: User | None) -> MediaEvent:
    return MediaEvent(
        media=change.instance,
        from_status=change.from_status,
        to_status=change.to_status,
        reason=change.reason,
        actor=actor,
    )


TEMPLATE_STATES: StateMachine[Template] = StateMachine(
    model=Template,
    statuses=TemplateStatus,
    table=TEMPLATE_TRANSITIONS,
    noun="template",
    event=_template_event,
)

MEDIA_STATES: StateMachine[Media] = StateMachine(
    model=Media,
    statuses=MediaStatus,
    table=MEDIA_TRANSITIONS,
    noun="media",
    event=_media_event,
)


def template_transition(
    *,
    template: Template,
    to: TemplateStatus,
    reason: str = "",
    actor: User | None = None,
    **fields: Any,
) -> Template:
    """Move `template` from its status as loaded to `to`, or raise ConflictError."""
    return TEMPLATE_STATES.transition(template, to=to, reason=reason, actor=actor, **fields)


def media_transition(
    *, media: Media, to: MediaStatus, reason: str = "", actor: User | None = None, **fields: Any
) -> Media:
    """Move `media` from its status as loaded to `to`, or raise ConflictError."""
    return MEDIA_STATES.transition(media, to=to, reason=reason, actor=actor, **fields)


def template_record_created(template: Template, *, actor: User | None) -> None:
    """The first event of a new template: it is born in its first status."""
    TemplateEvent.objects.create(template=template, to_status=template.status, actor=actor)


def media_record_created(media: Media, *, actor: User | None) -> None:
    MediaEvent.objects.create(media=media, to_status=media.status, actor=actor)
