"""CPU per request of the student's API list and dashboard, in-process, through ASGI.

`bench_pages.py` measures latency under wrk, which moves with whatever else the machine
runs. This measures what a change saves: CPU seconds (the process's, every thread) per
request of `/api/v1/desktops/` and `/`, each sent through the platform's ASGI
application as Daphne sends it (each request's sync code in a thread of its own), by
students signed in with real sessions, one request at a time. Then, with `--profile`,
a cProfile of each path (the top functions by cumulative time).

    .venv/bin/python bench/profile_api.py [--requests 500] [--students 20] [--desktops 2]
        [--redis-url URL] [--profile [N]]

It uses a scratch SQLite file and the Redis database of `--redis-url` (default
`$REDIS_URL`, else db 5), whose rate-limit counters it deletes when done.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import scratch_directory, setup_django, signed_in_class

PATHS = ["/api/v1/desktops/", "/"]


class AsgiClient:
    """Sends GETs to the ASGI application as Daphne would, and checks each answers 200."""

    def __init__(self, application: Any) -> None:
        self.application = application
        self.loop = asyncio.new_event_loop()

    async def _get(self, path: str, cookie: bytes) -> tuple[int, bytes]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"127.0.0.1"),
                (b"cookie", cookie),
                (b"accept", b"text/html,application/json"),
            ],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }
        sent = False
        status = 0
        body = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.Event().wait()  # the client never disconnects
            return {}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                body.append(message.get("body", b""))

        await self.application(scope, receive, send)
        return status, b"".join(body)

    def get(self, path: str, cookie: bytes) -> bytes:
        status, body = self.loop.run_until_complete(self._get(path, cookie))
        if status != 200:
            raise SystemExit(f"{path} answered {status}: {body[:300]!r}")
        return body


def cpu_per_request(client: AsgiClient, path: str, cookies: list[bytes], requests: int) -> float:
    """Milliseconds of the process's CPU per request, students taking turns."""
    for cookie in cookies[:5]:  # warm up: imports, URL resolver, templates, pools
        client.get(path, cookie)
    start = time.process_time()
    for index in range(requests):
        client.get(path, cookies[index % len(cookies)])
    return (time.process_time() - start) * 1000 / requests


def profile(client: AsgiClient, path: str, cookies: list[bytes], requests: int, top: int) -> str:
    """cProfile of the requests' sync code, which runs in worker threads (not the loop's).

    The calls into those threads never overlap (one request at a time), so one profiler
    switched on and off around each of them sees all of them.
    """
    from asgiref.sync import SyncToAsync

    profiler = cProfile.Profile()
    original = SyncToAsync.thread_handler

    def thread_handler(self: Any, *args: Any, **kwargs: Any) -> Any:
        return profiler.runcall(original, self, *args, **kwargs)

    SyncToAsync.thread_handler = thread_handler  # type: ignore[method-assign]
    try:
        for index in range(requests):
            client.get(path, cookies[index % len(cookies)])
    finally:
        SyncToAsync.thread_handler = original  # type: ignore[method-assign]
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


def clear_throttles(redis_url: str) -> None:
    import redis

    connection = redis.Redis.from_url(redis_url)
    keys = list(connection.scan_iter(match="isard:*:throttle_*"))
    if keys:
        connection.delete(*keys)
    connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3, help="best of this many runs")
    parser.add_argument("--students", type=int, default=20)
    parser.add_argument("--desktops", type=int, default=2, help="desktops per student")
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/5")
    )
    parser.add_argument(
        "--profile",
        type=int,
        nargs="?",
        const=30,
        default=0,
        metavar="TOP",
        help="also print a cProfile of each path (the TOP functions)",
    )
    parser.add_argument("--path", action="append", help="only these paths (repeatable)")
    options = parser.parse_args()

    os.environ["ISARD_DEBUG"] = "false"  # as deployed: no debug work per request
    work = scratch_directory()
    try:
        setup_django(work, options.redis_url)
        clear_throttles(options.redis_url)
        signed_in = signed_in_class("profile", options.students, options.desktops)
        cookies = [cookie.encode() for cookie in signed_in]
        from isard.asgi import application

        client = AsgiClient(application)
        paths = options.path or PATHS
        results = {}
        for path in paths:
            samples = []
            for _ in range(options.rounds):
                clear_throttles(options.redis_url)
                samples.append(cpu_per_request(client, path, cookies, options.requests))
            results[path] = samples
        print(
            f"| path | CPU ms per request (best of {options.rounds} x {options.requests}) "
            "| all runs |"
        )
        print("| --- | --- | --- |")
        for path, samples in results.items():
            runs = ", ".join(f"{sample:.2f}" for sample in samples)
            print(f"| `{path}` | {min(samples):.2f} | {runs} |")
        if options.profile:
            for path in paths:
                clear_throttles(options.redis_url)
                print(f"\n===== cProfile of {path} ({options.requests} requests)")
                print(profile(client, path, cookies, options.requests, options.profile))
    finally:
        clear_throttles(options.redis_url)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
