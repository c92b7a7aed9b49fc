"""Media in the admin: nobody points a media row at a file outside the media pool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import User
from templates_app.choices import MediaStatus
from templates_app.models import Media
from tests.campus import Campus


def client_of(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def iso(pools: dict[str, Any], north: Campus) -> Media:
    path = Path(pools["media"].path) / "install.iso"
    path.write_bytes(b"iso")
    return Media.objects.create(
        name="install", owner=north.teacher, path=str(path), status=MediaStatus.READY
    )


def change(client: Client, media: Media, **fields: str) -> Any:
    data = {"name": media.name, "kind": media.kind, "owner": media.owner_id or "", "path": ""}
    data.update(fields)
    url = reverse("admin:templates_app_media_change", args=[media.pk])
    return client.post(url, data)


def test_a_manager_cannot_point_media_at_a_file_of_the_host(north: Campus, iso: Media) -> None:
    before = iso.path
    response = change(client_of(north.manager), iso, name="renamed", path="/etc/shadow")
    assert response.status_code == 302, response.content.decode()[:2000]
    iso.refresh_from_db()
    assert iso.name == "renamed"  # the rest of the form is saved
    assert iso.path == before


def test_a_manager_sees_the_path_but_cannot_edit_it(north: Campus, iso: Media) -> None:
    url = reverse("admin:templates_app_media_change", args=[iso.pk])
    page = client_of(north.manager).get(url).content.decode()
    assert iso.path in page
    assert 'name="path"' not in page


def test_a_manager_cannot_add_media_rows_by_path(north: Campus, pools: dict[str, Any]) -> None:
    client = client_of(north.manager)
    assert client.get(reverse("admin:templates_app_media_add")).status_code == 403
    response = client.post(
        reverse("admin:templates_app_media_add"),
        {"name": "x", "kind": "iso", "owner": "", "path": "/etc/shadow"},
    )
    assert response.status_code == 403
    assert not Media.objects.filter(path="/etc/shadow").exists()


@pytest.mark.parametrize("where", ["/etc/shadow", "pool/../../secret.iso", "link"])
def test_an_administrator_may_only_point_media_into_the_media_pool(
    admin: User, iso: Media, pools: dict[str, Any], where: str, tmp_path: Path
) -> None:
    media_pool = Path(pools["media"].path)
    secret = tmp_path / "secret.iso"
    secret.write_bytes(b"secret")
    (media_pool / "link.iso").symlink_to(secret)
    path = {
        "/etc/shadow": "/etc/shadow",
        "pool/../../secret.iso": str(media_pool / ".." / ".." / "secret.iso"),
        "link": str(media_pool / "link.iso"),
    }[where]
    before = iso.path
    response = change(client_of(admin), iso, path=path)
    assert response.status_code == 200  # the form again, with the error
    assert "not inside the media pool" in response.content.decode()
    iso.refresh_from_db()
    assert iso.path == before


def test_an_administrator_may_move_media_within_the_media_pool(
    admin: User, iso: Media, pools: dict[str, Any]
) -> None:
    moved = Path(pools["media"].path) / "moved.iso"
    moved.write_bytes(b"iso")
    response = change(client_of(admin), iso, path=str(moved))
    assert response.status_code == 302, response.content.decode()[:2000]
    iso.refresh_from_db()
    assert iso.path == str(moved)
