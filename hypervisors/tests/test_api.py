"""API: hypervisors. Administrators read and write, school managers read, nobody else."""

from __future__ import annotations

import pytest

from accounts.models import User
from hypervisors.choices import HypervisorMode
from hypervisors.models import Hypervisor
from hypervisors.tests.factories import HypervisorFactory
from tests.campus import Campus, assert_error, client_for, ids

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("clean_throttles")]


def test_students_and_teachers_are_refused(north: Campus) -> None:
    host = HypervisorFactory.create()
    for person in (north.student, north.teacher):
        client = client_for(person)
        assert_error(client.get("/api/v1/hypervisors/"), 403)
        assert_error(client.get(f"/api/v1/hypervisors/{host.pk}/"), 403)
        assert_error(client.post(f"/api/v1/hypervisors/{host.pk}/drain/", {}), 403)


def test_managers_read_but_do_not_write(north: Campus, south: Campus) -> None:
    host = HypervisorFactory.create()
    for manager in (north.manager, south.manager):
        client = client_for(manager)
        assert ids(client.get("/api/v1/hypervisors/")) == {host.pk}
        assert client.get(f"/api/v1/hypervisors/{host.pk}/").json()["drain"] is None
        assert_error(client.post(f"/api/v1/hypervisors/{host.pk}/drain/", {}), 403)
        assert_error(
            client.post("/api/v1/hypervisors/", {"name": "x", "uri": "test:///default"}), 403
        )
    host.refresh_from_db()
    assert host.mode == HypervisorMode.ENABLED


def test_admins_register_drain_and_enable(admin: User, pools: object) -> None:
    client = client_for(admin)
    response = client.post("/api/v1/hypervisors/", {"name": "h2", "uri": "test:///default"})
    assert response.status_code == 201, response.content
    host = Hypervisor.objects.get(pk=response.json()["id"])
    assert_error(client.post("/api/v1/hypervisors/", {"name": "h2", "uri": "x"}), 409)
    drained = client.post(f"/api/v1/hypervisors/{host.pk}/drain/", {"policy": "stop"})
    assert drained.status_code == 202, drained.content
    assert drained.json()["mode"] == HypervisorMode.MAINTENANCE
    assert drained.json()["drain"]["total"] == 0
    assert_error(client.post(f"/api/v1/hypervisors/{host.pk}/drain/", {"policy": "nope"}), 400)
    enabled = client.post(f"/api/v1/hypervisors/{host.pk}/enable/")
    assert enabled.status_code == 200 and enabled.json()["mode"] == HypervisorMode.ENABLED
