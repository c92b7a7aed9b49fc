"""Fixtures the desktops' tests share."""

from __future__ import annotations

from typing import Any

import pytest

from desktops.choices import DesktopStatus
from desktops.models import Deployment, Desktop, Pool
from desktops.pools.services import pool_create, pool_refill
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


@pytest.fixture
def one_running_pool(run: Any, north: Campus, test_hypervisor: Any, base_template: Any) -> Any:
    """Makes a pool of north's first class that keeps one desktop running, filled now
    (`volatile` as asked); request course settings before it, they apply to its desktops."""

    def make(*, volatile: bool = False) -> Pool:
        pool = run(
            pool_create,
            actor=north.teacher,
            course=north.course,
            template=base_template,
            name="Drop-in",
            started=1,
            spare=0,
            volatile=volatile,
        )
        run(pool_refill, pool_id=pool.pk)
        return pool

    return make
