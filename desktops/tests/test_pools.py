"""Pools: desktops kept ready for a course, handed out at once by a compare-and-set."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.core.cache import cache
from django.db import connection, connections
from django.test import Client
from django.urls import reverse

from accounts.choices import CourseRole
from accounts.models import User
from accounts.tests.factories import MembershipFactory, UserFactory
from desktops.choices import DesktopStatus
from desktops.models import Desktop, DesktopEvent, Pool
from desktops.pools import services
from desktops.pools.selectors import pool_counts
from desktops.pools.services import pool_create, pool_delete, pool_get, pool_refill, pool_take
from isard.core.errors import ApplicationError, ConflictError, NotFoundError, PermissionDeniedError
from tests.campus import Campus, assert_error, client_for

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("clean_throttles")]

S = DesktopStatus


@pytest.fixture
def lab(run: Any, north: Campus, test_hypervisor: Any, base_template: Any) -> Pool:
    """A real pool on the test driver: 2 kept running, 1 more ready."""
    pool = run(
        pool_create,
        actor=north.teacher,
        course=north.course,
        template=base_template,
        name="Lab",
        started=2,
        spare=1,
    )
    run(pool_refill, pool_id=pool.pk)  # the new ones are stopped now: start two
    # A hand-out asks for a refill at most every few seconds, counted in Redis, which
    # outlives the test database: an earlier test's pool of the same id must not count.
    cache.delete(f"pool-refill:{pool.pk}")
    return pool


def test_a_pool_fills_itself_with_started_and_ready_desktops(lab: Pool, north: Campus) -> None:
    counts = pool_counts(lab)
    assert (counts.started, counts.ready, counts.making, counts.taken) == (2, 1, 0, 0)
    free = Desktop.objects.filter(pool=lab)
    assert {d.owner for d in free} == {north.teacher}
    assert lab.problem == "" and Pool.objects.get(pk=lab.pk).problem == ""


def test_a_student_gets_a_running_desktop_at_once_and_the_pool_refills(
    run: Any, lab: Pool, north: Campus
) -> None:
    desktop = run(pool_take, actor=north.student, pool=lab)
    assert desktop.status == S.STARTED
    assert desktop.owner == north.student and desktop.pool_taken_at is not None
    assert DesktopEvent.objects.filter(desktop=desktop, reason__contains="taken from the pool")
    # Asking again gives the same desktop.
    assert run(pool_take, actor=north.student, pool=lab).pk == desktop.pk
    # The take asked for a refill: one more was made, and the next refill starts one.
    run(pool_refill, pool_id=lab.pk)
    counts = pool_counts(lab)
    assert (counts.started, counts.ready, counts.taken) == (2, 1, 1)


def test_a_stopped_one_is_started_for_the_student_when_none_runs(
    run: Any, lab: Pool, north: Campus
) -> None:
    Pool.objects.filter(pk=lab.pk).update(started=0)
    Desktop.objects.filter(pool=lab, status=S.STARTED).update(status=S.FAILED)  # none runs
    desktop = run(pool_take, actor=north.student, pool=lab)
    desktop.refresh_from_db()
    assert desktop.status == S.STARTED and desktop.owner == north.student


def test_refusals_are_said_plainly(run: Any, lab: Pool, north: Campus, south: Campus) -> None:
    with pytest.raises(NotFoundError):
        pool_take(actor=north.other_student, pool=lab)  # another class
    with pytest.raises(NotFoundError):
        pool_take(actor=south.student, pool=lab)
    with pytest.raises(NotFoundError):
        pool_take(actor=north.teacher, pool=lab)  # teachers do not take
    Desktop.objects.filter(pool=lab).update(status=S.FAILED)  # nothing free that works
    with pytest.raises(ConflictError, match="no free desktop"):
        pool_take(actor=north.student, pool=lab)
    with pytest.raises(PermissionDeniedError):
        pool_create(
            actor=north.other_teacher,
            course=north.course,
            template=lab.template,
            name="x",
            started=1,
            spare=0,
        )
    with pytest.raises(ApplicationError, match="between 0 and 200"):
        pool_create(
            actor=north.teacher,
            course=north.course,
            template=lab.template,
            name="x",
            started=201,
            spare=0,
        )


def browser(user: User) -> Client:
    """A signed-in browser (the pages answer JSON to clients that ask for it)."""
    client = Client()
    client.force_login(user)
    return client


def test_the_dashboard_offers_the_pool_and_hides_its_free_desktops_from_the_teacher(
    run: Any, lab: Pool, north: Campus
) -> None:
    student = browser(north.student)
    page = student.get(reverse("dashboard")).content.decode()
    assert "Get a desktop: Lab" in page
    answer = student.post(reverse("pool-take-page", args=[lab.pk]))
    desktop = Desktop.objects.get(pool=lab, owner=north.student)
    assert answer.status_code == 302, answer.content
    assert answer["Location"] == reverse("desktop-viewer", args=[desktop.pk])
    assert "Get a desktop: Lab" not in student.get(reverse("dashboard")).content.decode()
    teacher = browser(north.teacher).get(reverse("dashboard")).content.decode()
    assert "Lab" not in teacher  # the free ones are the students' to take
    course = browser(north.teacher).get(reverse("course-page", args=[lab.course.pk]))
    assert "Pools: desktops kept ready" in course.content.decode()
    assert "1 taken" in course.content.decode()
    other = browser(north.other_student).post(reverse("pool-take-page", args=[lab.pk]))
    assert other.status_code == 404


def test_the_api_makes_sizes_and_hands_out(run: Any, lab: Pool, north: Campus) -> None:
    teacher = client_for(north.teacher)
    listed = teacher.get("/api/v1/pools/").json()["results"]
    assert [(p["name"], p["counts"]["started"]) for p in listed] == [("Lab", 2)]
    assert_error(teacher.put(f"/api/v1/pools/{lab.pk}/sizes/", {"started": 300, "spare": 0}), 400)
    sized = teacher.put(f"/api/v1/pools/{lab.pk}/sizes/", {"started": 3, "spare": 0}, format="json")
    assert sized.status_code == 200 and sized.json()["started"] == 3
    student = client_for(north.student)
    assert [p["id"] for p in student.get("/api/v1/pools/").json()["results"]] == [lab.pk]
    taken = student.post(f"/api/v1/pools/{lab.pk}/take/")
    assert taken.status_code == 200, taken.content
    assert taken.json()["status"] == S.STARTED
    assert_error(client_for(north.other_student).post(f"/api/v1/pools/{lab.pk}/take/"), 404)
    assert_error(client_for(north.other_teacher).get(f"/api/v1/pools/{lab.pk}/"), 404)
    made = teacher.post(
        "/api/v1/pools/",
        {
            "name": "Exam",
            "course": north.course.pk,
            "template": lab.template.pk,
            "started": 0,
            "spare": 0,
        },
        format="json",
    )
    assert made.status_code == 201, made.content
    refused = client_for(north.student).post(
        "/api/v1/pools/",
        {
            "name": "Mine",
            "course": north.course.pk,
            "template": lab.template.pk,
            "started": 1,
            "spare": 0,
        },
        format="json",
    )
    assert refused.status_code in (403, 404)


# --- sixty students at once, on PostgreSQL -------------------------------------------------


def class_of(n: int, north: Campus) -> list[User]:
    students = [
        UserFactory.create(username=f"pool-student{i}", school=north.school) for i in range(n)
    ]
    for student in students:
        MembershipFactory.create(course=north.course, user=student, role=CourseRole.STUDENT)
    return students


def ready_pool(north: Campus, desktops: int) -> Pool:
    pool = Pool.objects.create(
        name="Rush",
        course=north.course,
        template=north.teacher_template,
        owner=north.teacher,
        started=desktops,
    )
    Desktop.objects.bulk_create(
        [
            Desktop(
                name="Rush",
                owner=north.teacher,
                course=north.course,
                template=north.teacher_template,
                hardware=north.hardware,
                status=S.STARTED,
                pool=pool,
            )
            for _ in range(desktops)
        ]
    )
    return pool


def race(pool: Pool, students: list[User]) -> tuple[list[int], list[str]]:
    """Every student asks at the same moment, each on a connection of its own."""
    barrier = threading.Barrier(len(students))

    def ask(student: User) -> tuple[int | None, str]:
        try:
            barrier.wait()
            return pool_take(actor=student, pool=pool).pk, ""
        except ApplicationError as error:
            return None, error.message
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=len(students)) as executor:
        answers = list(executor.map(ask, students))
    return [pk for pk, _ in answers if pk is not None], [m for pk, m in answers if pk is None]


postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the race needs a database with real concurrency"
)


def test_deleting_a_pool_removes_its_free_desktops_and_leaves_the_taken_ones(
    run: Any, lab: Pool, north: Campus
) -> None:
    taken = run(pool_take, actor=north.student, pool=lab)
    free_before = set(Desktop.objects.filter(pool=lab, pool_taken_at__isnull=True))
    assert {d.status for d in free_before} == {S.STARTED, S.STOPPED}
    with pytest.raises(NotFoundError):
        pool_delete(actor=north.other_teacher, pool=lab)  # not their course
    run(pool_delete, actor=north.teacher, pool=lab)
    # Stopped free ones went to the teacher's recycle bin; running ones were forced off
    # first, and the next pass (the beat) bins them too.
    run(services.pools_refill_all)
    free = Desktop.objects.filter(pool=lab, pool_taken_at__isnull=True)
    assert {d.status for d in free} == {S.DELETED} and {d.owner for d in free} == {north.teacher}
    taken.refresh_from_db()
    assert taken.status == S.STARTED and taken.owner == north.student
    # Gone for everyone else: no hand-out, no refill, not listed, 404 in the API.
    with pytest.raises(NotFoundError):
        pool_get(actor=north.student, pool_id=lab.pk)
    assert run(pool_refill, pool_id=lab.pk) == {}
    assert Desktop.objects.filter(pool=lab).count() == len(free_before) + 1
    api = client_for(north.teacher)
    assert_error(api.get(f"/api/v1/pools/{lab.pk}/"), 404)
    assert lab.pk not in {p["id"] for p in api.get("/api/v1/pools/").json()["results"]}
    assert_error(api.delete(f"/api/v1/pools/{lab.pk}/"), 404)


def test_the_api_and_the_course_page_delete_a_pool(run: Any, lab: Pool, north: Campus) -> None:
    course_page = reverse("course-page", args=[north.course.pk])
    assert "Delete the pool" in browser(north.teacher).get(course_page).content.decode()
    assert_error(client_for(north.student).delete(f"/api/v1/pools/{lab.pk}/"), 404)
    with run.capture(execute=False) as callbacks:
        response = client_for(north.teacher).delete(f"/api/v1/pools/{lab.pk}/")
    assert response.status_code == 202 and response.json()["deleted_at"]
    run.process(callbacks)
    page = browser(north.teacher)
    assert (
        "Delete the pool"
        not in page.get(reverse("course-page", args=[north.course.pk])).content.decode()
    )
    assert page.post(reverse("pool-delete", args=[lab.pk])).status_code == 404


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_sixty_students_at_once_get_sixty_different_desktops(
    north: Campus, monkeypatch: Any
) -> None:
    monkeypatch.setattr(services, "send_after_commit", lambda *args, **kwargs: None)  # no refill
    students = class_of(60, north)
    pool = ready_pool(north, 60)
    won, refused = race(pool, students)
    assert refused == []
    assert len(won) == len(set(won)) == 60
    owners = Counter(Desktop.objects.filter(pool=pool).values_list("owner_id", flat=True))
    assert owners == Counter({student.pk: 1 for student in students})


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_sixty_students_for_thirty_desktops_thirty_win_and_thirty_are_told(
    north: Campus, monkeypatch: Any
) -> None:
    monkeypatch.setattr(services, "send_after_commit", lambda *args, **kwargs: None)
    students = class_of(60, north)
    pool = ready_pool(north, 30)
    won, refused = race(pool, students)
    assert len(won) == len(set(won)) == 30
    assert len(refused) == 30 and all("no free desktop" in message for message in refused)


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_one_student_asking_twenty_times_at_once_holds_one_desktop(
    north: Campus, monkeypatch: Any
) -> None:
    monkeypatch.setattr(services, "send_after_commit", lambda *args, **kwargs: None)
    pool = ready_pool(north, 20)
    won, refused = race(pool, [north.student] * 20)
    assert refused == [] and len(set(won)) == 1
    assert Desktop.objects.filter(pool=pool, owner=north.student).count() == 1
