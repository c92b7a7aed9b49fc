"""Every admin page an administrator uses loads, and the desktop actions call the services."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from accounts.choices import Role
from accounts.tests.factories import UserFactory
from desktops.choices import DesktopStatus
from desktops.models import Desktop
from desktops.services.provisioning import desktop_create
from desktops.services.transitions import desktop_transition
from templates_app.models import Template

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client() -> Client:
    admin = UserFactory.create(role=Role.ADMIN, is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(admin)
    return client


@pytest.mark.parametrize(
    "model",
    [
        "accounts/user",
        "accounts/course",
        "accounts/school",
        "desktops/desktop",
        "templates_app/template",
        "templates_app/hardwareprofile",
        "templates_app/media",
        "hypervisors/hypervisor",
        "hypervisors/storagepool",
        "hypervisors/disk",
    ],
)
def test_changelist_and_add_pages_load(admin_client: Client, model: str) -> None:
    assert admin_client.get(f"/admin/{model}/").status_code == 200
    assert admin_client.get(f"/admin/{model}/add/").status_code in (200, 403)


def test_desktop_detail_page_shows_its_events(
    admin_client: Client, run: Any, test_hypervisor: Any, base_template: Any
) -> None:
    student = UserFactory.create()
    desktop = run(desktop_create, actor=student, template=base_template, name="d")
    response = admin_client.get(reverse("admin:desktops_desktop_change", args=[desktop.pk]))
    assert response.status_code == 200
    assert b"creating" in response.content


def test_make_template_action_turns_a_stopped_desktop_into_a_template(
    admin_client: Client,
    run: Any,
    test_hypervisor: Any,
    base_template: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    desktop = run(
        desktop_create,
        actor=UserFactory.create(),
        template=base_template,
        name="Lab",
    )
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = admin_client.post(
            reverse("admin:desktops_desktop_changelist"),
            {"action": "make_template", "_selected_action": [desktop.pk]},
            follow=True,
        )
    assert response.status_code == 200
    assert b"Making the template" in response.content
    run.process(callbacks)
    template = Template.objects.get(name__startswith="Lab (")
    assert template.status == "ready"
    assert Desktop.objects.get(pk=desktop.pk).template == template


def test_start_action_refuses_clearly_when_a_desktop_cannot_start(
    admin_client: Client, run: Any, test_hypervisor: Any, base_template: Any
) -> None:
    desktop = run(
        desktop_create,
        actor=UserFactory.create(),
        template=base_template,
        name="Lab",
    )
    desktop.refresh_from_db()
    desktop_transition(desktop=desktop, to=DesktopStatus.DELETING)
    response = admin_client.post(
        reverse("admin:desktops_desktop_changelist"),
        {"action": "action_start", "_selected_action": [desktop.pk]},
        follow=True,
    )
    assert b"cannot start now" in response.content
