"""Revoking a `.vv` file's gateway credential: who may, and from the admin."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from desktops.models import DesktopEvent, GatewayCredential
from desktops.viewer.gateway_access import (
    GatewayRefusedError,
    gateway_credential_issue,
    gateway_credential_revoke,
    gateway_tunnel_authorize,
)
from isard.core.errors import PermissionDeniedError

pytestmark = pytest.mark.django_db

CREDENTIALS = "/admin/desktops/gatewaycredential/"


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_courses_teacher_revokes_a_students_credential_and_it_opens_nothing_more(
    north: Any,
) -> None:
    issued = gateway_credential_issue(actor=north.student, desktop=north.student_desktop)
    credential = GatewayCredential.objects.get(public_id=issued.public_id)
    assert gateway_credential_revoke(actor=north.teacher, credential=credential)
    assert not gateway_credential_revoke(actor=north.teacher, credential=credential)
    assert DesktopEvent.objects.filter(
        desktop=north.student_desktop, reason__contains=f"{issued.public_id} of"
    ).exists()
    with pytest.raises(GatewayRefusedError) as refused:
        gateway_tunnel_authorize(
            credential_id=issued.public_id, secret=issued.secret, host="127.0.0.1", port=5901
        )
    assert (refused.value.status, refused.value.reason) == (407, "revoked")


def test_another_student_or_another_schools_teacher_cannot_revoke(north: Any, south: Any) -> None:
    issued = gateway_credential_issue(actor=north.student, desktop=north.student_desktop)
    credential = GatewayCredential.objects.get(public_id=issued.public_id)
    for stranger in (north.other_student, south.teacher):
        with pytest.raises(PermissionDeniedError):
            gateway_credential_revoke(actor=stranger, credential=credential)
    credential.refresh_from_db()
    assert not credential.revoked


def test_a_manager_revokes_from_the_admin_only_their_schools_credentials(
    north: Any, south: Any
) -> None:
    mine = gateway_credential_issue(actor=north.student, desktop=north.student_desktop)
    theirs = gateway_credential_issue(actor=south.student, desktop=south.student_desktop)
    rows = GatewayCredential.objects.filter(public_id__in=[mine.public_id, theirs.public_id])
    client = signed_in(north.manager)
    page = client.get(CREDENTIALS).content.decode()
    assert "north-student desktop" in page and "south-student desktop" not in page
    client.post(
        CREDENTIALS,
        {"action": "revoke_gateway_credentials", "_selected_action": [r.pk for r in rows]},
    )
    revoked = dict(rows.values_list("public_id", "revoked"))
    assert revoked == {mine.public_id: True, theirs.public_id: False}
