"""The web tier as `./isardctl up` runs it: `manage.py isard_web` with two Daphne workers.

The server is a real subprocess tree (the parent holding the sockets, two children), on a
SQLite file of its own (the test database lives in this process's memory) and on the
Redis database of the tests, with a CA and host certificate made for the test by
`hypervisors.tls`. A student's session is written into that database before the server starts.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from django.conf import settings
from schemathesis.core.result import Err
from schemathesis.generation import GenerationMode

from hypervisors import tls
from isard.tests.test_api_schema import fuzz

ROOT = Path(settings.BASE_DIR)

SEED = """
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore
from accounts.tests.factories import UserFactory
from desktops.choices import DesktopStatus
from desktops.models import Desktop
from templates_app.models import Template
from templates_app.tests.factories import HardwareProfileFactory

student = UserFactory.create(username="web-student")
hardware = HardwareProfileFactory.create()
template = Template.objects.create(name="web template", owner=student, hardware=hardware)
for name in ("first desktop", "second desktop"):
    Desktop.objects.create(name=name, owner=student, template=template, hardware=hardware,
                           status=DesktopStatus.STOPPED)
session = SessionStore()
session[SESSION_KEY] = str(student.pk)
session[BACKEND_SESSION_KEY] = "accounts.backends.LocalAccountBackend"
session[HASH_SESSION_KEY] = student.get_session_auth_hash()
session.create()
print("SEED", student.pk, session.session_key)
from accounts.tokens import api_token_create
print("TOKEN", api_token_create(user=student, name="web")[1])
# The other roles of the student's school, for the HTTP pass of the API's contract.
from accounts.choices import CourseRole, Role
from accounts.tests.factories import CourseFactory, MembershipFactory
teacher = UserFactory.create(username="web-teacher", role=Role.TEACHER, school=student.school)
manager = UserFactory.create(username="web-manager", role=Role.MANAGER, school=student.school)
admin = UserFactory.create(username="web-admin", role=Role.ADMIN, school=student.school)
course = CourseFactory.create(school=student.school, name="web course")
MembershipFactory.create(course=course, user=teacher, role=CourseRole.TEACHER)
MembershipFactory.create(course=course, user=student, role=CourseRole.STUDENT)
for person in (teacher, manager, admin):
    print("ROLE", person.role, api_token_create(user=person, name="web")[1])
"""


@dataclass
class WebPlatform:
    process: subprocess.Popen[bytes]
    http_port: int
    https_port: int
    ca_file: Path
    cookie: str
    token: str
    student_id: int
    #: API tokens of the student's school's teacher, manager and an administrator.
    role_tokens: dict[str, str]
    environment: dict[str, str]

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def get(self, path: str, *, secure: bool) -> tuple[int, bytes]:
        connection: http.client.HTTPConnection
        if secure:
            connection = http.client.HTTPSConnection(
                "localhost", self.https_port, context=self.tls_context(), timeout=30
            )
        else:
            connection = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=30)
        try:
            connection.request("GET", path, headers={"Cookie": self.cookie})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def workers(self) -> list[int]:
        """The pids of the parent's children (its Daphne workers)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in children.read_text().split()]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(condition: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def answers(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def web_platform(tmp_path: Path, clean_throttles: None) -> Iterator[WebPlatform]:
    # Each server's database starts its ids at 1, and its rate-limit counters live in the
    # tests' Redis: one test's requests would count against the next one's student.
    paths = tls.PkiPaths(tmp_path / "pki")
    tls.host_certificate_issue(paths=paths, names=tls.HostNames(dns=("localhost",)))
    environment = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="isard.settings",
        DATABASE_URL=f"sqlite:///{tmp_path / 'web.sqlite3'}",
        REDIS_URL=settings.REDIS_URL,
        ISARD_PKI_DIR=str(paths.directory),
        ISARD_STORAGE_ROOT=str(tmp_path / "storage"),
        ISARD_BIND="127.0.0.1",
        ISARD_PORT=str(free_port()),
        ISARD_TLS_BIND="127.0.0.1",
        ISARD_TLS_PORT=str(free_port()),
        ISARD_WEB_WORKERS="2",
        ISARD_WEB_ACCESS_LOG="false",
        ISARD_DEBUG="false",
        # Short: a Unix socket's path has 107 bytes at most, pytest's tmp_path can be longer.
        ISARD_GATEWAY_SOCKET=f"{tempfile.mkdtemp(prefix='isard-gw-', dir='/tmp')}/gw.sock",
    )
    python = sys.executable
    subprocess.run(
        [python, "manage.py", "migrate", "--no-input", "-v0"],
        cwd=ROOT,
        env=environment,
        check=True,
    )
    seeded = subprocess.run(
        [python, "manage.py", "shell", "-c", SEED],
        cwd=ROOT,
        env=environment,
        check=True,
        capture_output=True,
        text=True,
    )
    _, student_id, session_key = next(
        line for line in seeded.stdout.splitlines() if line.startswith("SEED ")
    ).split()
    token = next(line for line in seeded.stdout.splitlines() if line.startswith("TOKEN "))
    role_tokens = dict(
        line.split()[1:] for line in seeded.stdout.splitlines() if line.startswith("ROLE ")
    )
    log = (tmp_path / "web.log").open("wb")
    process = subprocess.Popen(
        [python, "manage.py", "isard_web"],
        cwd=ROOT,
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    platform = WebPlatform(
        process=process,
        http_port=int(environment["ISARD_PORT"]),
        https_port=int(environment["ISARD_TLS_PORT"]),
        ca_file=paths.ca_cert,
        cookie=f"sessionid={session_key}",
        token=token.split()[1],
        student_id=int(student_id),
        role_tokens=role_tokens,
        environment=environment,
    )
    try:
        wait_until(lambda: len(platform.workers()) == 2, "two web workers")
        # The workers adopt the sockets once Django is loaded: wait for a real answer.
        wait_until(lambda: platform.get("/health/", secure=False)[0] in (200, 503), "HTTP")
        yield platform
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.close()
    assert process.returncode == 0, (tmp_path / "web.log").read_text()[-3000:]


def test_https_is_served_with_a_certificate_of_the_platform_ca_and_django_sees_it_secure(
    web_platform: WebPlatform,
) -> None:
    status, body = web_platform.get("/", secure=True)
    assert status == 200
    assert b"first desktop" in body

    # DRF builds the next page's link from request.is_secure(): https on the TLS port,
    # http on the plain one, with no proxy header involved.
    status, body = web_platform.get("/api/v1/desktops/?page_size=1", secure=True)
    assert status == 200
    assert json.loads(body)["next"].startswith(f"https://localhost:{web_platform.https_port}/")
    status, body = web_platform.get("/api/v1/desktops/?page_size=1", secure=False)
    assert json.loads(body)["next"].startswith(f"http://127.0.0.1:{web_platform.http_port}/")

    # Verification means something: a client that trusts only the system CAs refuses it.
    untrusting = ssl.create_default_context()
    with (
        pytest.raises(ssl.SSLCertVerificationError),
        socket.create_connection(("127.0.0.1", web_platform.https_port), timeout=10) as raw,
        untrusting.wrap_socket(raw, server_hostname="localhost"),
    ):
        pass


def proxy_connect(port: int, *pieces: bytes) -> bytes:
    """Send a CONNECT in `pieces` (a pause between each) and return the answer's head."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        for index, piece in enumerate(pieces):
            if index:
                time.sleep(0.3)
            client.sendall(piece)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = client.recv(4096)
            if not chunk:
                break
            answer += chunk
        return answer


def test_the_https_port_also_carries_the_spice_gateways_connects(
    web_platform: WebPlatform, tmp_path: Path
) -> None:
    """One public port (README: remote-viewer through the SPICE gateway): the workers tell
    a CONNECT from TLS by its first bytes and pass it to the gateway process."""
    request = b"CONNECT 127.0.0.1:5901 HTTP/1.1\r\nHost: 127.0.0.1:5901\r\n\r\n"
    port = web_platform.https_port
    # No gateway running: the client is told so, and HTTPS goes on.
    assert proxy_connect(port, request).startswith(b"HTTP/1.1 503 ")
    assert web_platform.get("/", secure=True)[0] == 200

    log = (tmp_path / "gateway.log").open("wb")
    gateway = subprocess.Popen(
        [sys.executable, "manage.py", "isard_gateway"],
        cwd=ROOT,
        env=web_platform.environment,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(
            lambda: Path(web_platform.environment["ISARD_GATEWAY_SOCKET"]).exists(),
            "the gateway's socket",
        )
        for _ in range(4):  # on both workers, most likely
            # The gateway itself answers: a CONNECT without a credential is 407.
            answer = proxy_connect(port, request)
            assert answer.startswith(b"HTTP/1.1 407 "), answer
            assert b'Proxy-Authenticate: Basic realm="isard"' in answer
            assert web_platform.get("/", secure=True)[0] == 200
        # The first bytes may arrive in pieces; a credential that does not exist is 407 too.
        answer = proxy_connect(
            port,
            b"CON",
            b"NECT 127.0.0.1:5901 HTTP/1.1\r\nProxy-Authorization: Basic bm86bm8=\r\n\r\n",
        )
        assert answer.startswith(b"HTTP/1.1 407 "), answer
        # Another method is not a CONNECT: it goes to TLS, which drops it.
        assert proxy_connect(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == b""
    finally:
        gateway.terminate()
        gateway.wait(timeout=20)
        log.close()
    assert gateway.returncode == 0, (tmp_path / "gateway.log").read_text()


def test_a_status_change_reaches_websockets_over_wss_on_every_worker(
    web_platform: WebPlatform,
) -> None:
    from channels_redis.core import RedisChannelLayer  # type: ignore[import-untyped]
    from websockets.sync.client import connect

    from desktops.services.transitions import owner_group

    url = f"wss://localhost:{web_platform.https_port}/ws/desktops/"
    headers = {
        "Cookie": web_platform.cookie,
        "Origin": f"https://localhost:{web_platform.https_port}",
    }
    # Several connections, so that both workers hold some (the kernel hands each to
    # whichever worker accepts first); each must get the snapshot and the broadcast.
    sockets = [
        connect(url, ssl=web_platform.tls_context(), additional_headers=headers, open_timeout=30)
        for _ in range(6)
    ]
    try:
        for websocket in sockets:
            snapshot = json.loads(websocket.recv(timeout=30))
            assert snapshot["type"] == "snapshot"
            assert sorted(d["name"] for d in snapshot["desktops"]) == [
                "first desktop",
                "second desktop",
            ]
        # Sent from this process, as the Celery worker sends it: only Redis connects us.
        layer = RedisChannelLayer(hosts=[web_platform.environment["REDIS_URL"]])
        from asgiref.sync import async_to_sync

        event = {"type": "desktop.status", "desktop": {"id": 1, "status": "started"}}
        async_to_sync(layer.group_send)(owner_group(web_platform.student_id), event)
        for websocket in sockets:
            message = json.loads(websocket.recv(timeout=30))
            assert message == {"type": "status", "desktop": {"id": 1, "status": "started"}}
    finally:
        for websocket in sockets:
            websocket.close()


def test_a_worker_that_dies_is_replaced_and_the_site_keeps_answering(
    web_platform: WebPlatform,
) -> None:
    first, second = web_platform.workers()
    os.kill(first, signal.SIGKILL)
    wait_until(
        lambda: first not in web_platform.workers() and len(web_platform.workers()) == 2,
        "a replacement worker",
    )
    assert second in web_platform.workers()
    for _ in range(6):
        assert web_platform.get("/", secure=True)[0] == 200
        assert web_platform.get("/", secure=False)[0] == 200


def test_sighup_replaces_every_worker_and_the_site_keeps_answering(
    web_platform: WebPlatform,
) -> None:
    """How a rotated certificate is loaded (README: Serving HTTPS and wss)."""
    old = set(web_platform.workers())
    os.kill(web_platform.process.pid, signal.SIGHUP)
    wait_until(
        lambda: not old & set(web_platform.workers()) and len(web_platform.workers()) == 2,
        "two new workers",
    )
    wait_until(lambda: web_platform.get("/", secure=True)[0] == 200, "HTTPS after SIGHUP")
    assert web_platform.process.poll() is None


def test_requests_twisted_used_to_answer_itself_get_the_apis_json_error(
    web_platform: WebPlatform,
) -> None:
    # Twisted parsed every form POST itself, and answered a multipart body without a
    # boundary with an empty 400 (closing the connection) before Django saw it.
    connection = http.client.HTTPConnection("127.0.0.1", web_platform.http_port, timeout=30)
    try:
        connection.request(
            "POST",
            "/api/v1/desktops/",
            body=b"x",
            headers={
                "Authorization": f"Bearer {web_platform.token}",
                "Content-Type": "multipart/form-data",
            },
        )
        response = connection.getresponse()
        body = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == 400
    assert set(body) == {"message", "extra"}, body

    # A newline in the path: the API's catch-all, not Django's HTML 404.
    status, answer = web_platform.get("/api/v1/desktops/1%0A/", secure=False)
    assert status == 404
    assert set(json.loads(answer)) == {"message", "extra"}


#: Requests per operation over HTTP: the in-process fuzzing (test_api_schema) is the
#: thorough one; this pass is for what only the web tier does (Twisted, Daphne, ASGI).
HTTP_POSITIVE_EXAMPLES = 3
HTTP_NEGATIVE_EXAMPLES = 3


def test_the_api_keeps_its_contract_over_the_real_web_tier(web_platform: WebPlatform) -> None:
    schema = schemathesis.openapi.from_url(
        f"http://127.0.0.1:{web_platform.http_port}/api/v1/schema/"
    )
    tokens = {"student": web_platform.token, **web_platform.role_tokens}
    assert sorted(tokens) == ["admin", "manager", "student", "teacher"]
    failures: list[str] = []
    seen: dict[str, set[int]] = {}
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            failures.append(f"the schema has an operation it cannot test: {result.err()}")
            continue
        operation = result.ok()
        name = f"{operation.method.upper()} {operation.path}"
        # A fuzzed logout or token deletion would sign the rest of the pass out.
        if operation.path.startswith("/api/v1/auth/") and operation.method != "get":
            continue
        for mode, examples in (
            (GenerationMode.POSITIVE, HTTP_POSITIVE_EXAMPLES),
            (GenerationMode.NEGATIVE, HTTP_NEGATIVE_EXAMPLES),
        ):
            for role, token in tokens.items():  # each role its own examples
                try:
                    fuzz(
                        operation.as_strategy(generation_mode=mode),
                        {role: token},
                        examples,
                        seen.setdefault(name, set()),
                    )
                except (Exception, BaseExceptionGroup) as error:
                    failures.append(f"{name} ({mode}, {role}): {error}")
    assert not failures, "\n\n".join(failures)
    assert len(seen) > 40
    assert any(200 <= code < 300 for codes in seen.values() for code in codes), seen


def test_every_workers_sign_ins_show_in_each_scrape_of_metrics(web_platform: WebPlatform) -> None:
    """Counted in Redis, not in a worker's memory: any worker's scrape has them all."""
    from prometheus_client.parser import text_string_to_metric_families

    from isard.core import metrics

    metrics.reset_all()
    body = json.dumps({"username": "web-student", "password": "password"})
    for _ in range(6):  # each on its own connection: the kernel spreads them over the workers
        connection = http.client.HTTPConnection("127.0.0.1", web_platform.http_port, timeout=30)
        try:
            connection.request(
                "POST", "/api/v1/auth/login/", body, {"Content-Type": "application/json"}
            )
            assert connection.getresponse().status == 201
        finally:
            connection.close()
    for _ in range(4):
        status, text = web_platform.get("/metrics", secure=False)
        assert status == 200
        families = {f.name: f for f in text_string_to_metric_families(text.decode())}
        [sign_ins] = families["isard_sign_ins"].samples
        assert sign_ins.value == 6
        desktops = {
            sample.labels["status"]: sample.value for sample in families["isard_desktops"].samples
        }
        assert desktops == {"stopped": 2}
    # HTTPS from loopback is the same connection address: allowed too.
    assert web_platform.get("/metrics", secure=True)[0] == 200
    metrics.reset_all()
