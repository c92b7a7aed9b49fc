"""200 students on their dashboards at once: latency of the pages and the API they use.

Ours: the platform as `isardctl up` runs it (`manage.py isard_web`: one Daphne process per
CPU on a shared socket, serving Django over ASGI; `--workers N` to choose), with 200
students who each own a desktop in one course, signed in with real sessions. `wrk` on
loopback keeps 200 connections busy, each request as the next student in turn, on:
- `/` (the dashboard page: the student's desktops and the templates shared with them),
- `/api/v1/desktops/` (what the mobile client and the live page poll), when the API is
  installed.

Baseline: one Daphne process serving a bare ASGI application that answers a fixed page of
the same size, with no Django at all: what the server and the loopback cost by
themselves. Both run in the same run, one after the other; the report gives p50 / p95 /
p99 and our p95 as a ratio of the baseline's.

Target (issue 8): p95 under 100 ms at 200 concurrent students.

    .venv/bin/python bench/bench_pages.py [--students 200] [--seconds 15] [--workers N]
        [--think-ms MIN MAX] [--redis-url URL] [--json out.json]

Needs `wrk` (Debian package `wrk`).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, scratch_directory, setup_django, signed_in_class

REDIS_DB = "redis://127.0.0.1:6379/5"  # its own by default, as it flushes it

WRK_SCRIPT = """
local cookies = {}
for line in io.lines(os.getenv("ISARD_BENCH_COOKIES")) do cookies[#cookies + 1] = line end
local path = os.getenv("ISARD_BENCH_PATH")
local counter = 0
local think_min = tonumber(os.getenv("ISARD_BENCH_THINK_MIN_MS"))
local think_max = tonumber(os.getenv("ISARD_BENCH_THINK_MAX_MS"))
-- Each connection is a student who reads the page, then clicks again after a while.
delay = function()
  if think_max <= 0 then return 0 end
  return math.random(think_min, think_max)
end
request = function()
  counter = counter + 1
  return wrk.format("GET", path, {
    ["Cookie"] = cookies[(counter % #cookies) + 1],
    ["Accept"] = "text/html,application/json",
  })
end
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    'ISARD-RESULT {"requests": %d, "errors": %d, "p50_ms": %.2f, "p95_ms": %.2f, '
      .. '"p99_ms": %.2f, "max_ms": %.2f, "seconds": %.2f}\\n',
    summary.requests, errors, latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, summary.duration / 1e6))
end
"""

BARE_APP = """
BODY = b"x" * {size}

async def application(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({{"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/html; charset=utf-8")]}})
    await send({{"type": "http.response.body", "body": BODY}})
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


def fetch(port: int, path: str, cookie: str) -> tuple[int, str | None, bytes]:
    """One GET as a student, without following redirects."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path, headers={"Cookie": cookie, "Accept": "text/html"})
        response = connection.getresponse()
        return response.status, response.getheader("Location"), response.read()
    finally:
        connection.close()


def run_wrk(
    port: int,
    path: str,
    cookies_file: Path,
    connections: int,
    seconds: int,
    think_ms: tuple[int, int],
) -> Any:
    script = cookies_file.with_name("bench.lua")
    script.write_text(WRK_SCRIPT)
    environment = dict(
        os.environ,
        ISARD_BENCH_COOKIES=str(cookies_file),
        ISARD_BENCH_PATH=path,
        ISARD_BENCH_THINK_MIN_MS=str(think_ms[0]),
        ISARD_BENCH_THINK_MAX_MS=str(think_ms[1]),
    )
    result = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}{path}",
        ],
        env=environ_checked(environment),
        capture_output=True,
        text=True,
        check=True,
    )
    for line in result.stdout.splitlines():
        if line.startswith("ISARD-RESULT "):
            return json.loads(line.removeprefix("ISARD-RESULT "))
    raise RuntimeError(f"wrk gave no result: {result.stdout} {result.stderr}")


def environ_checked(environment: dict[str, str]) -> dict[str, str]:
    if shutil.which("wrk") is None:
        raise SystemExit("bench_pages needs wrk: apt-get install wrk")
    return environment


def serve(application: str, port: int, environment: dict[str, str], cwd: Path) -> Any:
    return subprocess.Popen(
        [
            str(ROOT / ".venv" / "bin" / "daphne"),
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            application,
        ],
        cwd=cwd,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def serve_platform(port: int, workers: int, environment: dict[str, str], log: Path) -> Any:
    """The platform's web tier as the Procfile runs it, plain HTTP only (loopback)."""
    return subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "python"), "manage.py", "isard_web"],
        cwd=ROOT,
        env=dict(
            environment,
            ISARD_BIND="127.0.0.1",
            ISARD_PORT=str(port),
            ISARD_TLS_PORT="0",
            ISARD_WEB_WORKERS=str(workers),
        ),
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),  # a pipe nobody reads would stall the server once full
        start_new_session=True,
    )


def stop(process: Any) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument(
        "--think-ms",
        type=int,
        nargs=2,
        default=(1000, 3000),
        metavar=("MIN", "MAX"),
        help="each student waits a random time in this range between requests "
        "(0 0: no pause, every connection as fast as it can)",
    )
    parser.add_argument(
        "--redis-url",
        default=REDIS_DB,
        help="a Redis database of its own: it is flushed at the end",
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="Daphne processes of ours (0: one per CPU)"
    )
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()
    think = (options.think_ms[0], options.think_ms[1])
    environ_checked({})

    work = scratch_directory()
    processes: list[Any] = []
    try:
        setup_django(work, options.redis_url)
        from django.conf import settings

        cookies = signed_in_class("bench", options.students)
        cookies_file = work / "cookies.txt"
        cookies_file.write_text("\n".join(cookies) + "\n")
        environment = dict(
            os.environ,
            DJANGO_SETTINGS_MODULE="isard.settings",
            ISARD_DEBUG="false",  # as deployed: no debug toolbar work per request
        )
        port = free_port()
        ours = serve_platform(port, options.workers, environment, work / "platform.log")
        processes.append(ours)
        wait_for_port(port)

        # Every student must get the page itself: a redirect to the sign-in page (a session
        # the platform does not accept) would be measured as a fast, empty "success".
        paths = ["/", "/api/v1/desktops/"]
        page_size = 0
        for path in paths:
            for cookie in (cookies[0], cookies[-1]):
                status, location, body = fetch(port, path, cookie)
                if status != 200:
                    raise SystemExit(
                        f"{path} answered {status} {location or ''} to a signed-in student: "
                        "fix the benchmark's sessions before measuring"
                    )
                if path == "/":
                    page_size = len(body)

        load_before = " ".join(f"{value:.2f}" for value in os.getloadavg())
        results: dict[str, Any] = {}
        for path in paths:
            results[path] = run_wrk(
                port, path, cookies_file, options.students, options.seconds, think
            )
        stop(ours)

        bare_dir = Path(tempfile.mkdtemp(dir=work))
        (bare_dir / "bench_bare_app.py").write_text(BARE_APP.format(size=page_size))
        bare_port = free_port()
        bare = serve("bench_bare_app:application", bare_port, environment, bare_dir)
        processes.append(bare)
        wait_for_port(bare_port)
        results["bare"] = run_wrk(
            bare_port, "/", cookies_file, options.students, options.seconds, think
        )
        stop(bare)

        database = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
        pause = f"pausing {think[0] / 1000:g}–{think[1] / 1000:g} s" if think[1] else "no pause"
        workers = options.workers or os.cpu_count()
        print(
            f"| {options.students} students {pause}, {options.seconds} s each ({database}, "
            f"{workers} Daphne workers; load before: {load_before}) "
            "| requests | errors | p50 | p95 | p99 | p95 vs bare |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for name, result in results.items():
            ratio = result["p95_ms"] / max(results["bare"]["p95_ms"], 0.001)
            label = "bare Daphne, same page size" if name == "bare" else f"isard `{name}`"
            print(
                f"| {label} | {result['requests']} | {result['errors']} | "
                f"{result['p50_ms']:.1f} ms | {result['p95_ms']:.1f} ms | "
                f"{result['p99_ms']:.1f} ms | {ratio:.2f}x |"
            )
        if options.json:
            options.json.write_text(json.dumps(results, indent=2))
    finally:
        for process in processes:
            stop(process)
        import redis

        redis.Redis.from_url(options.redis_url).flushdb()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
