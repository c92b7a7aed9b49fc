"""The teachers' "My templates" page: state and sharing, for two teachers of one school."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from templates_app.selectors import templates_visible_to

pytestmark = pytest.mark.django_db


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_a_teacher_shares_a_template_with_a_course_and_its_students_can_use_it(
    north: Any,
) -> None:
    template = north.teacher_template
    template.shared_courses.clear()
    assert not templates_visible_to(north.student).filter(pk=template.pk).exists()
    teacher = signed_in(north.teacher)
    page = teacher.get("/templates/").content.decode()
    assert template.name in page and north.other_teacher_template.name not in page

    response = teacher.post(
        f"/templates/{template.pk}/sharing/", {"courses": [north.course.pk]}, follow=True
    )
    assert f"is shared with {north.course.name}." in response.content.decode()
    assert list(template.shared_courses.all()) == [north.course]
    assert templates_visible_to(north.student).filter(pk=template.pk).exists()

    teacher.post(f"/templates/{template.pk}/sharing/", {})  # nothing ticked: unshared
    assert not template.shared_courses.exists()


def test_a_teacher_cannot_share_anothers_template_or_with_a_course_not_theirs(
    north: Any, south: Any
) -> None:
    teacher = signed_in(north.teacher)
    other = north.other_teacher_template
    before = list(other.shared_courses.all())
    assert teacher.post(f"/templates/{other.pk}/sharing/", {"courses": []}).status_code == 404
    assert list(other.shared_courses.all()) == before

    mine = north.teacher_template
    response = teacher.post(
        f"/templates/{mine.pk}/sharing/", {"courses": [south.course.pk]}, follow=True
    )
    assert "You cannot share with those courses." in response.content.decode()
    assert list(mine.shared_courses.all()) == [north.course]


def test_students_have_no_templates_page(north: Any) -> None:
    assert signed_in(north.student).get("/templates/").status_code == 404
    assert "My templates" not in signed_in(north.student).get("/").content.decode()
