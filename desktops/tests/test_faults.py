"""Faults made in-process: a broker on a closed loopback port, a task that died mid-way.

The integration suite (tests/integration/test_faults.py) does the same with real
processes (a Redis server killed and frozen, a worker killed -9); here each rule of the
"put back" table has its test, quickly.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from accounts.tests.factories import UserFactory
from desktops.choices import DesktopStatus
from desktops.models import Desktop
from desktops.services.deployments import (
    deployment_create,
    deployment_create_missing,
    deployment_missing_students,
)
from desktops.services.lifecycle import desktop_shutdown, desktop_start, desktop_stop
from desktops.services.provisioning import desktop_create
from desktops.services.reconciliation import STUCK_AFTER, desktops_recover_stuck
from desktops.services.recycle_bin import desktop_delete
from hypervisors.drivers import libvirt_driver
from hypervisors.models import Disk
from isard.core.errors import TaskQueueUnavailableError
from tests.celery_broker import celery_broker

S = DesktopStatus

pytestmark = pytest.mark.django_db


@pytest.fixture
def broker_down() -> Iterator[None]:
    """The Celery app sends to a loopback port where nothing listens (connection refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again when the block ends
    with celery_broker(f"redis://127.0.0.1:{port}/0"):
        yield


@pytest.fixture
def desktop(run: Any, test_hypervisor: Any, base_template: Any) -> Desktop:
    owner = UserFactory.create()
    base_template.shared_with_everyone = True
    base_template.save()
    created = run(desktop_create, actor=owner, template=base_template, name="Mine")
    created.refresh_from_db()
    assert created.status == S.STOPPED
    return created


def _sent_for_real(django_capture_on_commit_callbacks: Any, call: Any, **kwargs: Any) -> None:
    """Run a service and then its after-commit callbacks, sending tasks to the broker."""
    with django_capture_on_commit_callbacks(execute=True):
        call(**kwargs)


@pytest.mark.parametrize(
    ("before", "action", "after"),
    [
        (S.STOPPED, desktop_start, S.STOPPED),
        (S.FAILED, desktop_start, S.FAILED),
        (S.STARTED, desktop_shutdown, S.STARTED),
        # A force-off and a delete cannot go back (the table has no such move): they fail
        # with the reason; the reconciliation later sees a guest that still runs.
        (S.STARTED, desktop_stop, S.FAILED),
        (S.STOPPED, desktop_delete, S.FAILED),
    ],
)
def test_an_action_whose_task_cannot_be_sent_puts_the_desktop_back_or_fails_it(
    desktop: Desktop,
    broker_down: None,
    django_capture_on_commit_callbacks: Any,
    before: DesktopStatus,
    action: Any,
    after: DesktopStatus,
) -> None:
    Desktop.objects.filter(pk=desktop.pk).update(status=before)
    desktop.refresh_from_db()
    with pytest.raises(TaskQueueUnavailableError, match="task queue is unreachable") as error:
        _sent_for_real(
            django_capture_on_commit_callbacks, action, actor=desktop.owner, desktop=desktop
        )
    assert error.value.status_code == 503
    desktop.refresh_from_db()
    assert desktop.status == after
    assert "task queue is unreachable" in desktop.status_reason
    assert desktop.disk is not None and Path(desktop.disk.path).exists()  # nothing lost


def test_a_new_desktop_whose_task_cannot_be_sent_is_removed_again(
    test_hypervisor: Any,
    base_template: Any,
    broker_down: None,
    django_capture_on_commit_callbacks: Any,
) -> None:
    owner = UserFactory.create()
    base_template.shared_with_everyone = True
    base_template.save()
    with pytest.raises(TaskQueueUnavailableError):
        _sent_for_real(
            django_capture_on_commit_callbacks,
            desktop_create,
            actor=owner,
            template=base_template,
            name="Mine",
        )
    assert not Desktop.objects.filter(owner=owner).exists()


def test_a_provisioning_that_died_after_its_disk_and_domain_is_failed_and_cleaned(
    desktop: Desktop,
) -> None:
    """The state a worker killed just before the last transition leaves behind."""
    assert desktop.disk is not None and desktop.hypervisor is not None
    overlay, disk_id = Path(desktop.disk.path), desktop.disk.pk
    Desktop.objects.filter(pk=desktop.pk).update(status=S.CREATING)
    assert desktops_recover_stuck() == 0  # not stuck yet: a task may be working
    later = timezone.now() + STUCK_AFTER + timedelta(seconds=1)
    assert desktops_recover_stuck(now=later) == 1
    desktop.refresh_from_db()
    assert desktop.status == S.FAILED
    assert "did not finish" in desktop.status_reason
    assert desktop.disk is None and desktop.hypervisor is None
    assert not overlay.exists()
    assert not Disk.objects.filter(pk=disk_id).exists()
    state = libvirt_driver.domain_state("test:///default", desktop.domain_name)
    assert state == libvirt_driver.DomainState.MISSING


def test_a_deployment_made_while_the_queue_is_down_gets_its_desktops_later(
    north: Any,
    test_hypervisor: Any,
    base_template: Any,
    broker_down: None,
    django_capture_on_commit_callbacks: Any,
    run: Any,
) -> None:
    """The deployment row stays (empty); "create the missing desktops" completes it."""

    from desktops.models import Deployment

    base_template.shared_with_everyone = True
    base_template.save()
    with pytest.raises(TaskQueueUnavailableError):
        _sent_for_real(
            django_capture_on_commit_callbacks,
            deployment_create,
            actor=north.teacher,
            course=north.course,
            template=base_template,
            name="Lab",
        )
    deployment = Deployment.objects.get(name="Lab")
    assert not Desktop.objects.filter(deployment=deployment).exists()
    assert deployment_missing_students(deployment) == [north.student]
    # The queue is back (the `run` fixture sends tasks by running them here).
    outcome = run(deployment_create_missing, actor=north.teacher, deployment=deployment)
    assert [d.owner for d in outcome.changed] == [north.student]
    assert Desktop.objects.get(deployment=deployment).status == S.STOPPED


def test_a_template_asked_for_while_the_queue_is_down_is_not_made_and_the_desktop_stops(
    desktop: Desktop, broker_down: None, django_capture_on_commit_callbacks: Any
) -> None:
    from accounts.choices import Role
    from desktops.services.templating import template_from_desktop
    from templates_app.models import Template

    desktop.owner.role = Role.TEACHER
    desktop.owner.save()
    templates_before = Template.objects.count()
    with pytest.raises(TaskQueueUnavailableError):
        _sent_for_real(
            django_capture_on_commit_callbacks,
            template_from_desktop,
            actor=desktop.owner,
            desktop_id=desktop.pk,
            name="Mine as a template",
        )
    assert Template.objects.count() == templates_before
    desktop.refresh_from_db()
    assert desktop.status == S.STOPPED
    assert "task queue is unreachable" in desktop.status_reason
