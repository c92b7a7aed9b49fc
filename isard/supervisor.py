"""Run the platform's processes (the Procfile) and keep them running.

`./isardctl up` used honcho, which stops every process when one exits: a Celery worker
killed by the kernel's OOM killer took the web tier, the viewers' websockets, beat and the
event listener down with it, and nobody could reach the guests that went on running. Here
a process that exits is started again after a back-off (1 s, doubling to a minute, back
to 1 s once it has run for a minute), with a line in the log saying so; the others go on
serving. What each process is doing is written to a small JSON file that `/health/` reads
(`ISARD_PROCESS_STATE`, `var/run/processes.json`). Ctrl-C (or SIGTERM) stops them all.

    python isard/supervisor.py [Procfile]

Run by its path, not as `isard.supervisor`: importing the `isard` package would load
Django and the Celery app, and this must keep running whatever the platform does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

#: A process that ran this long before it exited is restarted after the shortest wait.
STEADY_SECONDS = 60.0
FIRST_WAIT_SECONDS = 1.0
LONGEST_WAIT_SECONDS = 60.0
#: How long the processes get to stop on Ctrl-C before they are killed.
STOP_SECONDS = 10.0
COLOURS = ("\033[36m", "\033[33m", "\033[32m", "\033[35m", "\033[34m", "\033[31m")
RESET = "\033[0m"


def state_path() -> Path:
    return Path(os.environ.get("ISARD_PROCESS_STATE", "var/run/processes.json"))


def read_procfile(path: Path) -> list[tuple[str, str]]:
    """The (name, command) lines of a Procfile, in order; comments and blank lines skipped."""
    entries = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        name, command = line.split(":", 1)
        entries.append((name.strip(), command.strip()))
    return entries


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


@dataclass
class Managed:
    """One process of the Procfile and what happened to it."""

    name: str
    command: str
    colour: str
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    wait: float = FIRST_WAIT_SECONDS
    last_exit: str = ""
    restart_at: float | None = None
    readers: list[threading.Thread] = field(default_factory=list)

    def as_state(self) -> dict[str, Any]:
        running = self.process is not None and self.process.poll() is None
        return {
            "state": "running" if running else "restarting",
            "pid": self.process.pid if running and self.process else None,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "since": datetime.fromtimestamp(self.started_at, UTC).isoformat(timespec="seconds")
            if self.started_at
            else None,
        }


class Supervisor:
    def __init__(self, entries: list[tuple[str, str]], *, out: IO[str] = sys.stdout) -> None:
        self.managed = [
            Managed(name, command, COLOURS[index % len(COLOURS)])
            for index, (name, command) in enumerate(entries)
        ]
        self.width = max((len(name) for name, _ in entries), default=6)
        self.width = max(self.width, len("system"))
        self.out = out
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def say(self, name: str, colour: str, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        with self.lock:
            self.out.write(f"{colour}{stamp} {name:<{self.width}} |{RESET} {text}\n")
            self.out.flush()

    def system(self, text: str) -> None:
        self.say("system", "\033[1m", text)

    def write_state(self) -> None:
        path = state_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".tmp")
            body = {
                "supervisor_pid": os.getpid(),
                "updated_at": _now(),
                "processes": {item.name: item.as_state() for item in self.managed},
            }
            partial.write_text(json.dumps(body, indent=1))
            partial.replace(path)
        except OSError as error:
            self.system(f"could not write {path}: {error}")

    def _pipe(self, item: Managed, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            self.say(item.name, item.colour, raw.decode(errors="replace").rstrip("\n"))
        stream.close()

    def start(self, item: Managed) -> None:
        # A shell runs each line, as honcho did: ${VAR:-default} in the Procfile works. Each
        # child leads a process group of its own, so a stop reaches what it started too.
        command = item.command if item.command.startswith("exec ") else f"exec {item.command}"
        process = subprocess.Popen(
            ["/bin/sh", "-c", command],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        item.process, item.started_at, item.restart_at = process, time.time(), None
        assert process.stdout is not None
        reader = threading.Thread(target=self._pipe, args=(item, process.stdout), daemon=True)
        reader.start()
        item.readers = [reader]
        self.system(f"{item.name} started with pid {process.pid}")

    def check(self, item: Managed) -> None:
        """Notice an exit and plan the restart; start it when its wait is over."""
        process = item.process
        if process is not None and process.poll() is not None:
            code = process.returncode
            # What it had started goes with it (Daphne's children, Celery's pool): left
            # behind, they would hold its port or run its tasks beside the new one.
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            ran = time.time() - item.started_at
            item.wait = FIRST_WAIT_SECONDS if ran >= STEADY_SECONDS else item.wait
            item.last_exit = f"{_exit_text(code)} at {_now()}"
            item.process = None
            item.restart_at = time.monotonic() + item.wait
            self.system(
                f"{item.name} {_exit_text(code)} after {ran:.0f} s; starting it again in "
                f"{item.wait:.0f} s (the other processes go on)"
            )
            item.wait = min(item.wait * 2, LONGEST_WAIT_SECONDS)
            self.write_state()
        waited = item.restart_at is not None and time.monotonic() >= item.restart_at
        if item.process is None and waited:
            item.restarts += 1
            self.start(item)
            self.write_state()

    def run(self) -> int:
        for item in self.managed:
            self.start(item)
        self.write_state()
        while not self.stopping.wait(0.2):
            for item in self.managed:
                self.check(item)
        return self.stop()

    def stop(self) -> int:
        self.system("stopping every process")
        for item in self.managed:
            if item.process is not None and item.process.poll() is None:
                try:
                    os.killpg(item.process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + STOP_SECONDS
        for item in self.managed:
            if item.process is None:
                continue
            try:
                item.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self.system(f"{item.name} did not stop in {STOP_SECONDS:.0f} s: killing it")
                try:
                    os.killpg(item.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                item.process.wait()
        try:
            state_path().unlink()
        except FileNotFoundError:
            pass
        return 0


def main(argv: list[str]) -> int:
    procfile = Path(argv[1] if len(argv) > 1 else "Procfile")
    supervisor = Supervisor(read_procfile(procfile))

    def on_signal(signum: int, _frame: Any) -> None:
        supervisor.stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
