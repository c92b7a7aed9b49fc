"""Templates and media change status the way desktops do: a table, a conditional update,
an event row per change (`templates_app.services.transitions`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from accounts.choices import Role
from accounts.tests.factories import UserFactory
from isard.core.errors import ConflictError
from templates_app.choices import (
    MEDIA_TRANSITIONS,
    TEMPLATE_TRANSITIONS,
    MediaStatus,
    TemplateStatus,
)
from templates_app.models import Media, MediaEvent, Template, TemplateEvent
from templates_app.services.templates import template_delete, template_restore
from templates_app.services.transitions import media_transition, template_transition
from templates_app.services.uploads import media_upload_begin, media_upload_chunk

pytestmark = pytest.mark.django_db
T = TemplateStatus


def test_every_status_has_a_row_in_its_table() -> None:
    assert set(TEMPLATE_TRANSITIONS) == set(TemplateStatus)
    assert set(MEDIA_TRANSITIONS) == set(MediaStatus)


def test_a_template_change_not_in_the_table_is_refused_and_writes_nothing(
    base_template: Template,
) -> None:
    with pytest.raises(ConflictError, match="is ready; it cannot become creating"):
        template_transition(template=base_template, to=T.CREATING)
    assert Template.objects.get(pk=base_template.pk).status == T.READY
    assert list(base_template.events.values_list("to_status", flat=True)) == [T.READY]


def test_a_stale_template_loses_the_race(base_template: Template) -> None:
    stale = Template.objects.get(pk=base_template.pk)
    template_transition(template=base_template, to=T.DELETED)
    with pytest.raises(ConflictError, match="changed meanwhile"):
        template_transition(template=stale, to=T.DELETED)
    assert TemplateEvent.objects.filter(template=base_template, to_status=T.DELETED).count() == 1


def test_the_recycle_bin_of_templates_is_in_its_event_log(base_template: Template) -> None:
    admin = UserFactory.create(role=Role.ADMIN)
    template_delete(actor=admin, template=base_template)
    template_restore(actor=admin, template=base_template)
    events = list(base_template.events.values_list("from_status", "to_status", "actor"))
    assert events == [
        ("", T.READY, None),
        (T.READY, T.DELETED, admin.pk),
        (T.DELETED, T.READY, admin.pk),
    ]


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, size: int = -1, /) -> bytes:
        chunk, self.data = self.data[:size], self.data[size:]
        return chunk


def test_an_upload_records_its_statuses_and_a_finished_upload_cannot_begin_again(
    pools: dict[str, Any], tmp_path: Path
) -> None:
    teacher = UserFactory.create(role=Role.TEACHER)
    media = media_upload_begin(actor=teacher, name="disc", size_bytes=4)
    media_upload_chunk(actor=teacher, media=media, offset=0, stream=_Body(b"data"))
    media_transition(media=media, to=MediaStatus.VERIFYING, actor=teacher)
    media_transition(media=media, to=MediaStatus.READY)
    with pytest.raises(ConflictError, match="is ready; it cannot become uploading"):
        media_transition(media=Media.objects.get(pk=media.pk), to=MediaStatus.UPLOADING)
    assert list(MediaEvent.objects.filter(media=media).values_list("to_status", flat=True)) == [
        MediaStatus.UPLOADING,
        MediaStatus.VERIFYING,
        MediaStatus.READY,
    ]
