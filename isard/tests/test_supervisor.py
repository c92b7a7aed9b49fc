"""`./isardctl up`'s supervisor: one process that dies is started again, the others serve on.

The first test runs small real processes; the second the platform's own Procfile (web,
worker, beat, event listener) on a port of its own, killing each process in turn with
SIGKILL, as the kernel's OOM killer does.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from isard.supervisor import read_procfile

ROOT = Path(settings.BASE_DIR)


def _wait(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except (OSError, ValueError, KeyError):
            value = None
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


class Running:
    def __init__(self, procfile: Path, state: Path, env: dict[str, str], log: Path) -> None:
        self.state = state
        self.log = log
        self.output = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "isard" / "supervisor.py"), str(procfile)],
            cwd=ROOT,
            env={**env, "ISARD_PROCESS_STATE": str(state)},
            stdout=self.output,
            stderr=subprocess.STDOUT,
        )

    def processes(self) -> dict[str, Any]:
        return dict(json.loads(self.state.read_text())["processes"])

    def pid(self, name: str) -> int:
        return int(self.processes()[name]["pid"])

    def running(self, *names: str) -> bool:
        processes = self.processes()
        return all(processes[name]["state"] == "running" for name in names)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=30)
        finally:
            self.output.close()

    def exited(self, name: str) -> bool:
        return bool(self.processes()[name]["last_exit"])

    def restarted(self, name: str, old_pid: int) -> bool:
        return self.running(name) and self.pid(name) != old_pid


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[Callable[[str, dict[str, str]], Running]]:
    started: list[Running] = []

    def start(procfile_text: str, env: dict[str, str]) -> Running:
        procfile = tmp_path / "Procfile"
        procfile.write_text(procfile_text)
        running = Running(procfile, tmp_path / "processes.json", env, tmp_path / "out.log")
        started.append(running)
        return running

    yield start
    for running in started:
        if running.process.poll() is None:
            running.stop()
        print(running.log.read_text(errors="replace")[-4000:])


def test_a_process_that_dies_is_started_again_and_the_others_go_on(
    supervised: Callable[[str, dict[str, str]], Running],
) -> None:
    running = supervised(
        "one: sleep 300\ntwo: sleep 300\n# a comment\nthree: exec sleep ${NAP:-300}\n",
        {**os.environ},
    )
    _wait(lambda: running.running("one", "two", "three"), 10, "three processes")
    before = {name: running.pid(name) for name in ("one", "two", "three")}
    os.kill(before["two"], signal.SIGKILL)
    _wait(lambda: running.processes()["two"]["last_exit"], 5, "the exit to be noticed")
    assert "killed by SIGKILL" in running.processes()["two"]["last_exit"]
    _wait(lambda: running.running("two") and running.pid("two") != before["two"], 10, "two")
    assert running.processes()["two"]["restarts"] == 1
    assert running.pid("one") == before["one"] and running.pid("three") == before["three"]
    assert running.stop() == 0
    out = running.log.read_text()
    assert "two killed by SIGKILL" in out and "the other processes go on" in out
    assert not running.state.exists()
    # Stopped with the supervisor: no process of the Procfile is left running.
    _wait(lambda: not any(_alive(pid) for pid in before.values()), 10, "the processes to stop")


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie that nobody reaped does not count)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_the_procfile_is_read_as_honcho_read_it() -> None:
    entries = read_procfile(ROOT / "Procfile")
    assert [name for name, _ in entries] == ["web", "worker", "beat", "events", "gateway"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.integration
def test_killing_each_platform_process_in_turn_leaves_the_rest_serving(
    supervised: Callable[[str, dict[str, str]], Running], tmp_path: Path
) -> None:
    port = _free_port()
    storage = tmp_path / "storage"
    storage.mkdir()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "isard.settings",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'platform.sqlite3'}",
        "REDIS_URL": settings.REDIS_URL,
        "ISARD_STORAGE_ROOT": str(storage),
        "ISARD_PORT": str(port),
        "ISARD_TLS_PORT": "0",
        "ISARD_GATEWAY_PORT": str(_free_port()),
        "ISARD_WEB_WORKERS": "1",
        "ISARD_WORKER_QUEUES": f"supervisor-test-{port}",
    }
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    procfile = (
        (ROOT / "Procfile").read_text().replace(".venv/bin/", f"{Path(sys.executable).parent}/")
    )
    procfile = procfile.replace("var/celerybeat-schedule", str(tmp_path / "beat-schedule"))
    running = supervised(procfile, env)
    names = ("web", "worker", "beat", "events", "gateway")

    def health() -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/", timeout=5) as answer:
            return dict(json.loads(answer.read()))

    def answering() -> bool:
        try:
            return bool(health())
        except urllib.error.HTTPError as error:
            return error.code == 503  # it answers, unhealthy (no hypervisor here)

    _wait(lambda: running.running(*names), 60, "the platform's processes")
    _wait(answering, 60, "the web tier to answer")
    for victim in names:
        before = {name: running.pid(name) for name in names}
        os.kill(before[victim], signal.SIGKILL)
        _wait(partial(running.exited, victim), 10, f"{victim}'s exit noticed")
        others = [name for name in names if name != victim]
        assert {name: running.pid(name) for name in others} == {n: before[n] for n in others}
        if victim != "web":
            assert answering(), f"the web tier stopped answering when {victim} died"
        _wait(partial(running.restarted, victim, before[victim]), 90, f"{victim} restarted")
        _wait(answering, 60, "the web tier to answer")
    assert running.stop() == 0
