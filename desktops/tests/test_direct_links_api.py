"""Direct links through the API, the anonymous page, the course page and the admin, per role."""

from __future__ import annotations

import csv
import io
import re
from typing import Any

import pytest
from django.test import Client

from desktops.choices import DesktopStatus
from desktops.models import Deployment, Desktop, DirectLink
from desktops.viewer.direct_links import direct_link_create
from tests.campus import Campus, assert_error, client_for, ids

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("clean_throttles")]

S = DesktopStatus


def links_url(desktop: Desktop) -> str:
    return f"/api/v1/desktops/{desktop.pk}/direct-links/"


# --- the API ------------------------------------------------------------------------------


def test_a_teacher_makes_a_link_for_their_students_desktop_and_sees_its_url_once(
    north: Campus, exam_desktop: Desktop
) -> None:
    teacher = client_for(north.teacher)
    response = teacher.post(links_url(exam_desktop), {"hours": 2}, format="json")
    assert response.status_code == 201, response.content
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    assert body["url"].startswith("http://testserver/v/")
    assert body["username"] == "north-student" and body["desktop"] == exam_desktop.pk
    listed = teacher.get("/api/v1/direct-links/", {"desktop": exam_desktop.pk})
    assert ids(listed) == {body["id"]}
    shown = listed.json()["results"][0]
    assert shown["live"] is True and shown["uses"] == 0
    assert body["url"].split("/v/")[1].strip("/") not in str(listed.json())


@pytest.mark.parametrize("who", ["manager", "admin"])
def test_the_schools_manager_and_an_admin_make_links(
    north: Campus, admin: Any, exam_desktop: Desktop, who: str
) -> None:
    person = admin if who == "admin" else north.manager
    response = client_for(person).post(links_url(exam_desktop), {}, format="json")
    assert response.status_code == 201, response.content


def test_the_student_may_see_their_desktop_but_not_make_a_link_for_it(
    north: Campus, exam_desktop: Desktop
) -> None:
    assert_error(client_for(north.student).post(links_url(exam_desktop), {}, format="json"), 403)
    assert not DirectLink.objects.exists()


def test_another_student_another_teacher_and_another_schools_teacher_get_404(
    north: Campus, south: Campus, exam_desktop: Desktop
) -> None:
    for stranger in (north.other_student, north.other_teacher, south.teacher, south.manager):
        client = client_for(stranger)
        assert_error(client.post(links_url(exam_desktop), {}, format="json"), 404)
    assert not DirectLink.objects.exists()


def test_revoking_through_the_api_is_for_those_who_see_the_link(
    north: Campus, south: Campus, exam_desktop: Desktop
) -> None:
    link = direct_link_create(actor=north.teacher, desktop=exam_desktop).link
    url = f"/api/v1/direct-links/{link.pk}/revoke/"
    for stranger in (north.student, north.other_teacher, south.teacher):
        assert_error(client_for(stranger).post(url), 404)
        assert_error(client_for(stranger).get(f"/api/v1/direct-links/{link.pk}/"), 404)
        assert ids(client_for(stranger).get("/api/v1/direct-links/")) == set()
    response = client_for(north.teacher).post(url)
    assert response.status_code == 200 and response.json()["live"] is False
    assert client_for(north.teacher).post(url).status_code == 200  # again: nothing changes


def test_a_deployments_links_in_one_request_and_revoked_in_another(
    north: Campus, south: Campus, exam: Deployment
) -> None:
    url = f"/api/v1/deployments/{exam.pk}/direct-links/"
    revoke = f"/api/v1/deployments/{exam.pk}/revoke-direct-links/"
    for stranger in (north.student, north.other_teacher, south.teacher):
        assert_error(client_for(stranger).post(url, {}, format="json"), 404)
        assert_error(client_for(stranger).post(revoke), 404)
    response = client_for(north.teacher).post(url, {"hours": 1}, format="json")
    assert response.status_code == 201, response.content
    assert [row["username"] for row in response.json()["links"]] == ["north-student"]
    assert_error(client_for(north.teacher).post(url, {"hours": 0}, format="json"), 400)
    assert client_for(north.teacher).post(revoke).json() == {"revoked": 1}


# --- the anonymous page ---------------------------------------------------------------------


def test_the_page_of_a_link_starts_the_stopped_desktop_and_waits_for_it(
    run: Any, north: Campus, exam_desktop: Desktop
) -> None:
    issued = direct_link_create(actor=north.teacher, desktop=exam_desktop)
    anonymous = Client()
    # The start task is sent after the page's commit; the runner runs it after the page.
    page = run(anonymous.get, issued.path)
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-state="waiting"' in html and 'data-direct="true"' in html
    assert "SPICE client" not in html  # the .vv needs a signed-in owner
    token_url = issued.path + "token/"
    csrf = anonymous.cookies["csrftoken"].value
    exam_desktop.refresh_from_db()
    assert exam_desktop.status == S.STARTED
    answer = anonymous.post(token_url, HTTP_X_CSRFTOKEN=csrf)
    assert answer.status_code == 200, answer.content
    assert answer.json()["path"].startswith("/ws/viewer/")
    assert run(anonymous.get, issued.path).status_code == 200
    assert DirectLink.objects.get().uses == 2


def test_a_link_that_does_not_work_is_a_plain_404_page_and_a_flood_is_429(
    north: Campus, exam_desktop: Desktop, settings: Any
) -> None:
    settings.ISARD_DIRECT_LINK_FAILURE_RATE = "2/minute"
    issued = direct_link_create(actor=north.teacher, desktop=exam_desktop)
    anonymous = Client()
    client_for(north.teacher).post(f"/api/v1/direct-links/{issued.link.pk}/revoke/")
    revoked = anonymous.get(issued.path)
    unknown = anonymous.get("/v/no-such-link/")
    assert revoked.status_code == unknown.status_code == 404

    # The same page, but for the CSRF token (masked afresh each time).
    def without_csrf(response: Any) -> str:
        return re.sub(r'name="csrf-token" content="[^"]*"', "", response.content.decode())

    assert without_csrf(revoked) == without_csrf(unknown)
    assert anonymous.get("/v/another-guess/").status_code == 429


def test_a_refused_start_is_shown_on_the_page(
    run: Any, north: Campus, exam_desktop: Desktop
) -> None:
    from accounts.models import Quota

    Quota.objects.create(user=north.student, max_running=0)
    issued = direct_link_create(actor=north.teacher, desktop=exam_desktop)
    page = run(Client().get, issued.path)
    assert page.status_code == 422
    assert 'data-state="refused"' in page.content.decode()


# --- the course page and the admin --------------------------------------------------------


def test_the_course_page_downloads_a_csv_and_revokes_them_all(
    north: Campus, exam: Deployment
) -> None:
    teacher = Client()
    teacher.force_login(north.teacher)
    page = teacher.get(f"/courses/{north.course.pk}/").content.decode()
    assert f"/deployments/{exam.pk}/direct-links.csv" in page
    response = teacher.post(f"/deployments/{exam.pk}/direct-links.csv", {"hours": "3"})
    assert response.status_code == 200 and response["Content-Type"] == "text/csv"
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == ["username", "desktop", "url", "expires_at"]
    assert rows[1][0] == "north-student" and rows[1][2].startswith("http://testserver/v/")
    revoked = teacher.post(f"/deployments/{exam.pk}/direct-links/revoke/")
    assert revoked.status_code == 302
    assert not DirectLink.objects.filter(revoked_at__isnull=True).exists()


def test_a_csv_cell_that_a_spreadsheet_would_run_is_quoted(north: Campus, exam: Deployment) -> None:
    Desktop.objects.filter(deployment=exam).update(name="=HYPERLINK(1)")
    teacher = Client()
    teacher.force_login(north.teacher)
    response = teacher.post(f"/deployments/{exam.pk}/direct-links.csv")
    assert "'=HYPERLINK(1)" in response.content.decode()


def test_another_teacher_gets_404_from_the_course_pages_link_buttons(
    north: Campus, exam: Deployment
) -> None:
    other = Client()
    other.force_login(north.other_teacher)
    assert other.post(f"/deployments/{exam.pk}/direct-links.csv").status_code == 404
    assert other.post(f"/deployments/{exam.pk}/direct-links/revoke/").status_code == 404
    assert not DirectLink.objects.exists()


def test_a_manager_revokes_from_the_admin_only_their_schools_links(
    north: Campus, south: Campus, exam_desktop: Desktop
) -> None:
    ours = direct_link_create(actor=north.teacher, desktop=exam_desktop).link
    theirs = direct_link_create(actor=south.teacher, desktop=south.student_desktop).link
    manager = Client()
    manager.force_login(north.manager)
    listed = manager.get("/admin/desktops/directlink/")
    assert listed.status_code == 200
    assert f"direct link {ours.pk} to" in listed.content.decode()
    assert f"direct link {theirs.pk} to" not in listed.content.decode()
    manager.post(
        "/admin/desktops/directlink/",
        {"action": "revoke_direct_links", "_selected_action": [ours.pk, theirs.pk]},
    )
    ours.refresh_from_db()
    theirs.refresh_from_db()
    assert ours.revoked_at is not None and theirs.revoked_at is None
