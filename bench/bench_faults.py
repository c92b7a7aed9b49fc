"""How long sending a task takes to fail when Redis is down: isard's settings vs Celery's.

Two faults, made for real on a redis-server of the bench's own:
- refused: the server was killed (its port is closed);
- frozen: the server was stopped with SIGSTOP (the port accepts, nothing answers).

For each: `isard.core.tasks.send_task` with isard's settings (bounded sockets, a short
publish retry, no result subscription), and a Celery app with Celery's defaults and the
same Redis as broker and result store, sending as `app.send_task` does by default (what
isard did before). A send that has not returned after `--cap` seconds is reported as
"> cap" and abandoned (its thread is a daemon).

    .venv/bin/python bench/bench_faults.py [--rounds 3] [--cap 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import scratch_directory, setup_django


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def timed(call: Any, cap: float) -> tuple[float | None, str]:
    """Seconds until `call` raised or returned (None: still running after `cap`)."""
    outcome: dict[str, str] = {}

    def run() -> None:
        try:
            call()
            outcome["result"] = "sent"
        except Exception as error:
            outcome["result"] = " ".join(f"{type(error).__name__}: {error}".split())[:110]

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(cap)
    if thread.is_alive():
        return None, "still waiting"
    return time.monotonic() - started, outcome["result"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cap", type=float, default=30.0)
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()

    work = scratch_directory()
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    setup_django(work, url)
    import logging

    logging.disable(logging.ERROR)  # each failed send logs an error; the table says it
    from celery import Celery

    from desktops import task_calls
    from isard.core.tasks import send_task

    def isard_send() -> None:
        send_task(task_calls.start_desktop(desktop_id=1))

    defaults = Celery("defaults", broker=url, backend=url)

    def defaults_send() -> None:
        defaults.send_task(task_calls.START_DESKTOP, kwargs={"desktop_id": 1})

    results: dict[str, dict[str, Any]] = {}
    for fault in ("refused", "frozen"):
        for name, call in (("isard", isard_send), ("celery defaults", defaults_send)):
            times: list[float | None] = []
            outcome = ""
            for _ in range(options.rounds):
                server = subprocess.Popen(
                    ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
                    stdout=subprocess.DEVNULL,
                )
                time.sleep(0.3)
                try:
                    if fault == "refused":
                        server.kill()
                        server.wait()
                    else:
                        os.kill(server.pid, signal.SIGSTOP)
                    seconds, outcome = timed(call, options.cap)
                    times.append(seconds)
                finally:
                    if server.poll() is None:
                        os.kill(server.pid, signal.SIGCONT)
                    server.kill()
                    server.wait()
                if seconds is None:
                    break  # a hang is a hang; no need to wait for it again
            finished = [t for t in times if t is not None]
            median = statistics.median(finished) if len(finished) == len(times) else None
            results[f"{fault} / {name}"] = {"median_s": median, "outcome": outcome}
            shown = f"{median:6.2f} s" if median is not None else f"> {options.cap:.0f} s"
            print(f"{fault:8} {name:16} {shown}   {outcome}")
    if options.json:
        options.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
