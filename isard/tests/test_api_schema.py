"""The API's own OpenAPI contract, fuzzed against the running code (schemathesis).

The schema is loaded from the application (WSGI, in process), then every operation gets
generated requests, as a student, a teacher, a school manager and an administrator, with
a few real objects present: valid requests (positive) and invalid ones (negative). Half
of the positive requests on `/{id}/` paths name a real object, so that the code behind
the 404 is exercised too. Every response goes through every check schemathesis has
(its default: all of them): no server error, a documented status code, content type and
headers, the schema of its status code (the error shape included), invalid data refused
and valid data accepted, credentials not ignored, a missing required header and an
undocumented method refused. Then, for each role, the stateful walk: the OpenAPI links
(isard.core.api.schema) take what a create answers to the operations on that object,
where the checks of a sequence apply too (a deleted object is gone, a created one can be
read). Deterministic: Hypothesis derandomized, no example database, no shrinking; a
bounded number of examples per operation keeps the run short.

Two checks are narrowed, for the requests where what they assert is not what the
contract says (see `not_applicable`): never by widening what the API accepts. (A read
after a DELETE of what goes to the recycle bin answers 200: that is the recycle bin.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, transaction
from hypothesis import HealthCheck, Phase, given
from hypothesis import strategies as st
from schemathesis.core.result import Err
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    negative_data_rejection,
    positive_data_acceptance,
    use_after_free,
)

from accounts.tokens import api_token_create
from desktops.choices import DesktopStatus
from desktops.models import Deployment, Desktop, Pool
from desktops.services.deployments import deployment_create
from hypervisors.tests.factories import HypervisorFactory
from templates_app.choices import TemplateStatus
from templates_app.models import Media, Template
from tests.campus import Campus

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("clean_throttles")]

#: Generated requests per operation, role-mixed: positive and negative.
POSITIVE_EXAMPLES = 15
NEGATIVE_EXAMPLES = 8
#: Stateful walks per role, and steps in each.
STATEFUL_EXAMPLES = 40
STATEFUL_STEPS = 8

#: Operations whose body names other objects by id (a template, students, courses): a
#: generated id names an object that exists, and that the caller may use, only by
#: chance, and an id of no such object is bad input (400), as the contract says. The
#: stateful walk gives them ids that exist.
NAMES_OTHER_OBJECTS = frozenset(
    {
        "POST /api/v1/desktops/",
        "POST /api/v1/deployments/",
        "PUT /api/v1/deployments/{id}/co-teachers/",
        "POST /api/v1/deployments/{id}/recreate/",
        "PUT /api/v1/templates/{id}/sharing/",
        "POST /api/v1/pools/",
    }
)
#: Operations with a rule across their parameters, which a schema cannot say: the days of
#: a usage report (the first before the last, at most `ISARD_USAGE_MAX_DAYS` of them, from
#: 2000 to a year ahead). Each generated day is a valid date; most pairs are refused (400).
CROSS_PARAMETER_RULES = frozenset({"GET /api/v1/usage/", "GET /api/v1/usage/hosts/"})
FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")
#: DELETE moves these to the recycle bin (documented: "Move the template to the recycle
#: bin"): the object stays readable, with its status "deleted", and `restore/` brings it
#: back until it is purged. A read after the DELETE answering 200 is that contract, not a
#: use after free; everything else about those reads is checked.
RECYCLE_BIN = ("/api/v1/desktops/{id}", "/api/v1/templates/{id}", "/api/v1/deployments/{id}")


def not_applicable(case: Any) -> list[Any]:
    """The checks that do not apply to this request (see the module's docstring)."""
    name = f"{case.operation.method.upper()} {case.operation.path}"
    excluded: list[Any] = []
    if case.operation.path.startswith(RECYCLE_BIN):
        excluded.append(use_after_free)
    if name in NAMES_OTHER_OBJECTS or name in CROSS_PARAMETER_RULES:
        return [*excluded, positive_data_acceptance]
    # A form has no null: schemathesis writes a JSON null as the text "null", which is not
    # a number nor a list of them; leaving the field out is how a form says "none".
    if case.media_type in FORMS and isinstance(case.body, dict) and None in case.body.values():
        return [*excluded, positive_data_acceptance]
    return excluded


@pytest.fixture
def in_process_requests() -> Iterator[None]:
    """Requests run inside the test's transaction, as Django's own test client does.

    Django closes "old" connections at each request's start and end; inside a test
    transaction that would close the test's connection (on PostgreSQL), so those signal
    handlers are off while the fuzzer's requests run.
    """
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def pinned_ids(north: Campus, base_template: Any, spare_token_id: int) -> dict[str, int]:
    """For each collection, a real object to name in `/{id}/` paths."""
    deployment, _ = deployment_create(
        actor=north.teacher, course=north.course, template=base_template, name="Lab"
    )
    media = Media.objects.create(name="install.iso", owner=None, path="/nonexistent/install.iso")
    pool = Pool.objects.create(
        name="Lab", course=north.course, template=base_template, owner=north.teacher
    )
    return {
        "/api/v1/desktops/": north.student_desktop.pk,
        "/api/v1/templates/": north.teacher_template.pk,
        "/api/v1/courses/": north.course.pk,
        "/api/v1/deployments/": deployment.pk,
        "/api/v1/auth/tokens/": spare_token_id,
        "/api/v1/hypervisors/": HypervisorFactory.create().pk,
        "/api/v1/media/": media.pk,
        "/api/v1/hardware-profiles/": north.hardware.pk,
        "/api/v1/pools/": pool.pk,
    }


def restore_pinned(north: Campus, pins: dict[str, int]) -> None:
    Desktop.objects.filter(pk=pins["/api/v1/desktops/"]).update(
        status=DesktopStatus.STOPPED, deleted_at=None
    )
    Template.objects.filter(pk=pins["/api/v1/templates/"]).update(
        status=TemplateStatus.READY, deleted_at=None
    )
    Deployment.objects.filter(pk=pins["/api/v1/deployments/"]).update(deleted_at=None, visible=True)


def test_the_api_keeps_its_contract_under_fuzzing(
    north: Campus, admin: Any, base_template: Any, in_process_requests: None, settings: Any
) -> None:
    # The fuzzer is one client sending many requests: rate limits would only hide code.
    settings.ISARD_API_THROTTLE_RATES = {}
    schema = schemathesis.openapi.from_wsgi("/api/v1/schema/", WSGIHandler())
    people = {"student": north.student, "teacher": north.teacher, "manager": north.manager}
    people["admin"] = admin
    spare, _ = api_token_create(user=north.student, name="spare")
    pins = pinned_ids(north, base_template, spare.pk)

    failures: list[str] = []
    operations = 0
    #: Status codes seen per operation: proof that the fuzzer got past the 404s.
    seen: dict[str, set[int]] = {}
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            failures.append(f"the schema has an operation it cannot test: {result.err()}")
            continue
        operation = result.ok()
        operations += 1
        # A DELETE fuzzed before a start would leave nothing to start: each operation
        # begins with the pinned objects as they were made.
        restore_pinned(north, pins)
        # Fresh tokens too: a fuzzed logout revokes the token it was sent with.
        tokens = {role: api_token_create(user=person)[1] for role, person in people.items()}
        pinned = next(
            (pk for prefix, pk in pins.items() if operation.path.startswith(prefix + "{id}")),
            None,
        )
        for mode, examples in (
            (GenerationMode.POSITIVE, POSITIVE_EXAMPLES),
            (GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES),
        ):
            strategies = [operation.as_strategy(generation_mode=mode)]
            if pinned is not None and mode == GenerationMode.POSITIVE:
                strategies.append(
                    operation.as_strategy(generation_mode=mode, path_parameters={"id": pinned})
                )
            statuses = seen.setdefault(f"{operation.method.upper()} {operation.path}", set())
            try:
                fuzz(st.one_of(strategies), tokens, examples, statuses)
            # Collect every operation's failures (a group of them, at times), then report.
            except (Exception, BaseExceptionGroup) as error:
                failures.append(f"{operation.method.upper()} {operation.path} ({mode}): {error}")
    assert operations > 40
    assert not failures, "\n\n".join(failures)
    succeeded = sorted(name for name, codes in seen.items() if any(200 <= c < 300 for c in codes))
    assert len(succeeded) >= 30, (succeeded, seen)
    assert 202 in seen["POST /api/v1/desktops/{id}/start/"], seen


def fuzz(strategy: Any, tokens: dict[str, str], examples: int, statuses: set[int]) -> None:
    @hypothesis.settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy, role=st.sampled_from(sorted(tokens)))
    def run(case: Any, role: str) -> None:
        response = case.call(headers={"Authorization": f"Bearer {tokens[role]}"})
        statuses.add(response.status_code)
        case.validate_response(
            response,
            headers={"Authorization": f"Bearer {tokens[role]}"},
            excluded_checks=not_applicable(case),
        )

    run()


@pytest.mark.parametrize("role", ["student", "teacher", "manager", "admin"])
def test_linked_steps_keep_the_contract_for_each_role(
    role: str,
    north: Campus,
    admin: Any,
    base_template: Any,
    in_process_requests: None,
    settings: Any,
) -> None:
    settings.ISARD_API_THROTTLE_RATES = {}
    # The collections whose creates have links (and what their objects link to): every
    # other operation is fuzzed one by one above, and would only make the walks longer.
    schema = schemathesis.openapi.from_wsgi("/api/v1/schema/", WSGIHandler()).include(
        path_regex=r"^/api/v1/(desktops|deployments|templates|hypervisors)/"
    )
    person = {
        "student": north.student,
        "teacher": north.teacher,
        "manager": north.manager,
        "admin": admin,
    }[role]
    seen: set[tuple[str, int]] = set()
    Template.objects.filter(pk=base_template.pk).update(shared_with_everyone=True)
    # What a create names, made real for half the creates: a random id names nothing, so
    # the links from a create would otherwise never be walked.
    real = {
        "POST /api/v1/desktops/": {"template": base_template.pk, "media": None},
        "POST /api/v1/deployments/": {
            "course": north.course.pk,
            "template": base_template.pk,
            "students": None,
        },
    }

    class Walk(schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            # Each walk starts from the same objects (Hypothesis replays a walk and expects
            # the same answers), and rolls back what it made.
            self.savepoint = transaction.savepoint()
            # Each walk its own token: a step may sign out, which revokes it.
            self.token = api_token_create(user=person)[1]

        def teardown(self) -> None:
            transaction.savepoint_rollback(self.savepoint)

        def before_call(self, case: Any) -> None:
            fields = real.get(f"{case.operation.method.upper()} {case.operation.path}")
            if fields and isinstance(case.body, dict):
                self.creates = getattr(self, "creates", 0) + 1
                if self.creates % 2:
                    # A negative case made whole here is no longer negative: it may be
                    # accepted (see validate_response).
                    self.patched = getattr(self, "patched", set()) | {id(case)}
                    for name, value in fields.items():
                        # A form says "none" by leaving the field out.
                        if value is None and case.media_type in FORMS:
                            case.body.pop(name, None)
                        else:
                            case.body[name] = value

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"headers": {"Authorization": f"Bearer {self.token}"}}

        def after_call(self, response: Any, case: Any) -> None:
            super().after_call(response, case)
            # A step that signed out or revoked a token may have revoked ours: a new one,
            # or every later step would only meet the 401.
            if case.operation.path.startswith("/api/v1/auth/") and case.method != "GET":
                self.token = api_token_create(user=person)[1]
            seen.add(
                (f"{case.operation.method.upper()} {case.operation.path}", response.status_code)
            )

        def validate_response(
            self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any
        ) -> None:
            excluded = not_applicable(case)
            if id(case) in getattr(self, "patched", set()):
                excluded.append(negative_data_rejection)
            case.validate_response(
                response,
                headers=kwargs.get("headers"),
                excluded_checks=excluded,
                transport_kwargs=kwargs or None,
                recorder=self.recorder,
            )

    Walk.run(
        settings=hypothesis.settings(
            max_examples=STATEFUL_EXAMPLES,
            stateful_step_count=STATEFUL_STEPS,
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
    )
    # The walks got past the 404s: an object made in a walk was then used in it. Said of
    # the roles that may create in several collections: a student may create desktops
    # only, and whether the derandomised walks reach that one create depends on the
    # database's ids (on PostgreSQL the student's walks did not); their steps are
    # checked against the contract all the same.
    if role != "student":
        assert any(code < 300 and "{id}" in name for name, code in seen), sorted(seen)
