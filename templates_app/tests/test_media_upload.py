"""Uploading an ISO from the browser: chunks, resume, checks, and a desktop installed from it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from accounts.choices import Role
from accounts.tests.factories import UserFactory
from desktops.models import Desktop
from templates_app.choices import MediaStatus
from templates_app.models import Media
from templates_app.tests.factories import HardwareProfileFactory

pytestmark = pytest.mark.django_db
JSON = {"Accept": "application/json"}
RAW = "application/octet-stream"


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def teacher() -> Any:
    return UserFactory.create(username="tina", role=Role.TEACHER)


def begin(client: Client, size: int, name: str = "install.iso") -> Any:
    return client.post("/media/uploads/", {"name": name, "size": size, "kind": "iso"}, headers=JSON)


def test_an_iso_uploaded_in_chunks_becomes_ready_with_its_checksum(
    run: Any, pools: Any, teacher: Any
) -> None:
    content = os.urandom(20_000)
    client = client_for(teacher)
    started = begin(client, len(content))
    assert started.status_code == 201, started.content
    state = started.json()
    assert state["status"] == MediaStatus.UPLOADING and state["offset"] == 0
    for offset in range(0, len(content), 8_000):
        response = client.post(
            f"{state['chunk_url']}?offset={offset}",
            content[offset : offset + 8_000],
            content_type=RAW,
        )
        assert response.status_code == 200, response.content
        assert response.json()["offset"] == min(offset + 8_000, len(content))
    finished = run(client.post, state["finish_url"], headers=JSON)
    assert finished.status_code == 202
    media = Media.objects.get(pk=state["id"])
    assert media.status == MediaStatus.READY
    assert media.sha256 == hashlib.sha256(content).hexdigest()
    assert Path(media.path).read_bytes() == content
    assert not Path(media.path + ".part").exists()
    assert oct(Path(media.path).stat().st_mode & 0o777) == "0o444"


def test_a_chunk_at_the_wrong_offset_is_refused_with_where_to_go_on(
    pools: Any, teacher: Any
) -> None:
    client = client_for(teacher)
    state = begin(client, 10).json()
    client.post(f"{state['chunk_url']}?offset=0", b"abcd", content_type=RAW)
    # The same chunk again (a retry after a lost answer): nothing is written twice.
    again = client.post(f"{state['chunk_url']}?offset=0", b"abcd", content_type=RAW)
    assert again.status_code == 409
    assert again.json()["extra"]["offset"] == 4
    assert client.get(state["chunk_url"]).json()["offset"] == 4
    too_long = client.post(f"{state['chunk_url']}?offset=4", b"0123456789", content_type=RAW)
    assert too_long.status_code == 400
    assert client.get(state["chunk_url"]).json()["offset"] == 4
    early = client.post(state["finish_url"], headers=JSON)
    assert early.status_code == 409 and "has 4 of 10 bytes" in early.json()["message"]


def test_uploads_belong_to_their_teacher_and_students_cannot_upload(
    pools: Any, teacher: Any
) -> None:
    state = begin(client_for(teacher), 10).json()
    other = client_for(UserFactory.create(username="theo", role=Role.TEACHER))
    assert other.get(state["chunk_url"]).status_code == 404
    refused = other.post(f"{state['chunk_url']}?offset=0", b"x", content_type=RAW)
    assert refused.status_code == 404
    student = client_for(UserFactory.create(username="sam", role=Role.STUDENT))
    response = begin(student, 10)
    assert response.status_code == 403 and "Only teachers" in response.json()["message"]
    assert begin(client_for(teacher), 0).status_code == 400


def test_a_desktop_is_installed_from_an_uploaded_iso(
    run: Any, test_hypervisor: Any, teacher: Any
) -> None:
    client = client_for(teacher)
    state = begin(client, 4).json()
    client.post(f"{state['chunk_url']}?offset=0", b"\0\0\0\0", content_type=RAW)
    run(client.post, state["finish_url"])
    hardware = HardwareProfileFactory.create(networks=[])
    page = client.get("/media/").content.decode()
    assert "Install a new desktop from an ISO" in page and "install.iso" in page
    response = run(
        client.post,
        "/media/install/",
        {"media": state["id"], "hardware": hardware.pk, "name": "Windows install"},
    )
    assert response.status_code == 302
    desktop = Desktop.objects.get(name="Windows install")
    assert list(desktop.media.values_list("pk", flat=True)) == [state["id"]]
    assert desktop.status == "stopped", desktop.status_reason
