"""Point the platform's Celery app at another broker for the length of a test."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu import pools as kombu_pools


def _drop_pooled_connections(app: Any) -> None:
    # The app's pool is kombu's global one for the URL: closing it alone would leave
    # the closed pool in kombu's registry for the next test to acquire from.
    kombu_pools.reset()
    app._pool = None
    app.amqp._producer_pool = None
    # The control mailbox (health's ping) caches the producer pool it first saw.
    app.control.mailbox.__dict__.pop("producer_pool", None)


@contextmanager
def celery_broker(url: str) -> Iterator[None]:
    """Send every task (and health's ping) to `url`, then back to the configured broker.

    Pooled connections are dropped on the way in and out, so no send reuses a
    connection to the other broker.
    """
    from isard.celery import app as celery_app

    app: Any = celery_app  # its connection pools are private attributes
    app.loader.import_default_modules()
    previous = app.conf.broker_url
    app.conf["broker_url"] = url
    _drop_pooled_connections(app)
    try:
        yield
    finally:
        app.conf["broker_url"] = previous
        _drop_pooled_connections(app)


@contextmanager
def celery_worker_process(name: str, *, queues: str | None = None) -> Iterator[None]:
    """A real Celery worker (solo pool) in another process, named `name@<host>`, on the
    configured broker (and `queues`, else the default one); yields once it answers a ping."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    import pytest

    from isard.celery import app

    # Tasks earlier tests left on the broker would keep a new solo worker busy (and deaf
    # to pings) for as long as they run; this worker is for the test that starts it.
    app.control.purge()
    command = [sys.executable, "-m", "celery", "-A", "isard", "worker", "--pool=solo"]
    command += ["--loglevel=WARNING", f"--hostname={name}@%h"]
    if queues:
        command.append(f"--queues={queues}")
    process = subprocess.Popen(
        command,
        cwd=Path(__file__).resolve().parents[1],
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        destination = [f"{name}@{os.uname().nodename}"]
        while time.monotonic() < deadline:
            if app.control.ping(destination=destination, timeout=0.5):
                break
            time.sleep(0.5)
        else:
            pytest.fail("the Celery worker did not answer within 60 s")
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)
