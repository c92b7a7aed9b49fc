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


# --- quotas, the client's hash, cancelling, expiry and deleting (issue 13, finding 5) ------


def _upload(client: Client, content: bytes) -> dict[str, Any]:
    state = begin(client, len(content)).json()
    response = client.post(f"{state['chunk_url']}?offset=0", content, content_type=RAW)
    assert response.status_code == 200, response.content
    return dict(state)


@pytest.mark.parametrize("limit", [{"max_media": 0}, {"max_disk_gib": 0}])
def test_an_upload_over_the_quota_is_refused_before_a_byte_and_makes_nothing(
    pools: Any, teacher: Any, limit: dict[str, int]
) -> None:
    from accounts.models import Quota

    Quota.objects.create(user=teacher, **limit)
    refused = begin(client_for(teacher), 4096)
    assert refused.status_code == 422, refused.content
    assert "quota" in refused.json()["message"].lower()
    assert not Media.objects.exists()
    assert not list(Path(pools["media"].path).iterdir())


def test_the_quota_is_checked_again_at_finish_and_an_unfinished_upload_holds_none(
    run: Any, pools: Any, teacher: Any
) -> None:
    from accounts.models import Quota
    from accounts.quotas import usage_of

    Quota.objects.create(user=teacher, max_media=1)
    client = client_for(teacher)
    first = _upload(client, b"a" * 4096)
    assert usage_of([teacher.pk])[teacher.pk].media == 0  # under way: holds nothing
    second = _upload(client, b"b" * 4096)  # fits at its beginning too
    assert run(client.post, second["finish_url"], headers=JSON).status_code == 202
    assert Media.objects.get(pk=second["id"]).status == MediaStatus.READY
    refused = run(client.post, first["finish_url"], headers=JSON)
    assert refused.status_code == 422, refused.content
    assert "quota" in refused.json()["message"].lower()
    left = Media.objects.get(pk=first["id"])
    assert left.status == MediaStatus.UPLOADING  # nothing lost: cancel it, or free space
    assert Path(left.path + ".part").read_bytes() == b"a" * 4096


def test_a_file_that_arrives_different_from_the_one_sent_fails_and_its_bytes_go(
    run: Any, pools: Any, teacher: Any
) -> None:
    client = client_for(teacher)
    sent = os.urandom(10_000)
    state = _upload(client, sent)
    claimed = hashlib.sha256(b"what the browser read").hexdigest()
    finished = run(client.post, state["finish_url"], {"sha256": claimed}, headers=JSON)
    assert finished.status_code == 202
    media = Media.objects.get(pk=state["id"])
    assert media.status == MediaStatus.FAILED
    assert (
        hashlib.sha256(sent).hexdigest() in media.status_reason and claimed in media.status_reason
    )
    assert not Path(media.path).exists() and not Path(media.path + ".part").exists()

    good = _upload(client, sent)
    right = hashlib.sha256(sent).hexdigest()
    run(client.post, good["finish_url"], {"sha256": right.upper()}, headers=JSON)
    assert Media.objects.get(pk=good["id"]).status == MediaStatus.READY
    bad = client.post(_upload(client, sent)["finish_url"], {"sha256": "not-a-hash"}, headers=JSON)
    assert bad.status_code == 400 and "64 hexadecimal" in bad.json()["message"]


def test_an_unfinished_upload_can_be_cancelled_and_one_left_behind_expires(
    pools: Any, teacher: Any, settings: Any
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from templates_app.services.uploads import media_uploads_expire

    client = client_for(teacher)
    cancelled = _upload(client, b"x" * 100)
    part = Path(Media.objects.get(pk=cancelled["id"]).path + ".part")
    assert part.exists()
    response = client.post(f"/media/{cancelled['id']}/upload/cancel/")
    assert response.status_code == 302
    assert not Media.objects.filter(pk=cancelled["id"]).exists() and not part.exists()

    settings.ISARD_MEDIA_UPLOAD_EXPIRY_HOURS = 24
    left = _upload(client, b"y" * 100)
    assert media_uploads_expire() == 0  # a chunk came in a moment ago
    assert media_uploads_expire(now=timezone.now() + timedelta(hours=25)) == 1
    media = Media.objects.get(pk=left["id"])
    assert media.status == MediaStatus.FAILED and "within 24 h" in media.status_reason
    assert not Path(media.path + ".part").exists()


def test_deleting_media_in_the_admin_removes_its_file_unless_a_desktop_has_it(
    run: Any, pools: Any, teacher: Any
) -> None:
    admin = UserFactory.create(role=Role.ADMIN, is_staff=True, is_superuser=True)
    client = client_for(teacher)
    state = _upload(client, b"z" * 1000)
    run(client.post, state["finish_url"], headers=JSON)
    media = Media.objects.get(pk=state["id"])
    assert Path(media.path).exists()
    in_use = Desktop.objects.create(
        name="installing", owner=teacher, hardware=HardwareProfileFactory.create()
    )
    in_use.media.add(media)
    staff = client_for(admin)
    staff.post(f"/admin/templates_app/media/{media.pk}/delete/", {"post": "yes"})
    assert Media.objects.filter(pk=media.pk).exists() and Path(media.path).exists()
    in_use.media.clear()
    staff.post(f"/admin/templates_app/media/{media.pk}/delete/", {"post": "yes"})
    assert not Media.objects.filter(pk=media.pk).exists()
    assert not Path(media.path).exists()


def test_the_pages_sha256_is_the_one_python_computes_for_any_chunking() -> None:
    """static/isard/sha256.js, run by Node (installed with the viewer's noVNC)."""
    import subprocess

    from django.conf import settings

    script = settings.BASE_DIR / "static" / "isard" / "sha256.js"
    sizes = [0, 1, 55, 56, 63, 64, 65, 1000, 300_000]
    program = f"""
global.window = {{}}; require({str(script)!r});
const sizes = {sizes}; const out = [];
for (const n of sizes) {{
  const data = new Uint8Array(n); for (let i = 0; i < n; i++) data[i] = (i * 7 + 3) & 255;
  const hash = new window.IsardSha256();
  for (let at = 0, step = 1; at < n; at += step, step = step * 3 % 997 + 1)
    hash.update(data.subarray(at, at + step));
  out.push(hash.hex());
}}
console.log(JSON.stringify(out));
"""
    done = subprocess.run(["node", "-e", program], capture_output=True, text=True, check=True)
    import json

    expected = [
        hashlib.sha256(bytes((i * 7 + 3) & 255 for i in range(n))).hexdigest() for n in sizes
    ]
    assert json.loads(done.stdout) == expected
