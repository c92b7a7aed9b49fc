"""Fixtures the desktops' tests share."""

from __future__ import annotations

from typing import Any

import pytest

from desktops.choices import DesktopStatus
from desktops.models import Deployment, Desktop
from desktops.services.deployments import deployment_create
from tests.campus import Campus

S = DesktopStatus


@pytest.fixture
def exam(run: Any, north: Campus, test_hypervisor: Any, base_template: Any) -> Deployment:
    """A deployment to north's first class: one real (stopped) desktop per student."""
    deployment, _ = run(
        deployment_create,
        actor=north.teacher,
        course=north.course,
        template=base_template,
        name="Exam",
    )
    return deployment


@pytest.fixture
def exam_desktop(exam: Deployment, north: Campus) -> Desktop:
    desktop = Desktop.objects.get(deployment=exam, owner=north.student)
    assert desktop.status == S.STOPPED
    return desktop
