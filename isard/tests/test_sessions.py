"""Sessions (isard.sessions): read in plain SQL, they load exactly what Django's engine does."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.sessions.backends import db
from django.contrib.sessions.models import Session
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.tests.factories import UserFactory
from isard.sessions import SessionStore

pytestmark = pytest.mark.django_db


def both(session_key: str | None) -> tuple[object, object]:
    ours, djangos = SessionStore(session_key), db.SessionStore(session_key)
    loaded = (ours.load(), djangos.load())
    assert ours.session_key == djangos.session_key
    return loaded


def test_a_session_loads_as_with_djangos_engine_and_an_expired_or_unknown_one_is_empty() -> None:
    session = SessionStore()
    session["who"] = "me"
    session.create()
    assert both(session.session_key) == ({"who": "me"}, {"who": "me"})
    assert both("no-such-session-key") == ({}, {})
    assert both(None) == ({}, {})
    Session.objects.filter(pk=session.session_key).update(
        expire_date=timezone.now() - timedelta(seconds=1)
    )
    assert both(session.session_key) == ({}, {})


def test_a_tampered_session_is_empty() -> None:
    session = SessionStore()
    session["who"] = "me"
    session.create()
    Session.objects.filter(pk=session.session_key).update(session_data="not signed")
    assert both(session.session_key) == ({}, {})


def test_a_signed_in_person_stays_signed_in_and_signing_out_ends_the_session(
    client: Client, fast_passwords: None
) -> None:
    assert settings.SESSION_ENGINE == "isard.sessions"
    user = UserFactory.create(username="sessions-student")
    client.force_login(user)
    assert client.get("/", HTTP_HOST="localhost").status_code == 200
    key = client.cookies["sessionid"].value
    assert SessionStore(key).load()
    client.post(reverse("accounts:sign-out"), HTTP_HOST="localhost")
    assert SessionStore(key).load() == {}
    assert client.get("/", HTTP_HOST="localhost").status_code == 302
