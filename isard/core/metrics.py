"""Event counters and histograms for /metrics, kept in Redis so every process adds to them.

The web tier is several Daphne processes, plus a Celery worker, beat, the events listener
and the SPICE gateway: a counter kept in one process's memory would show only that
process's share in a scrape. Here each counter is a Redis hash (`HINCRBY`, one field per
set of label values) and each histogram a hash of per-bucket counts, its sum and its
count, so any process may record and the one that answers the scrape reads them all.

The metrics are declared here, once (name, help, labels, buckets), so a scrape shows each
of them even before anything was counted. Recording never raises: with Redis unreachable
the event is lost and a warning logged; a start does not fail because a counter could
not be written. Label values must come from a small set (a status, a reason kind, a
queue name), never from user text.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import redis
from django.conf import settings
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

KEY_PREFIX = "isard:metrics:"


@dataclass(frozen=True)
class Counter:
    """A count that only goes up (Prometheus adds `_total` to the name)."""

    name: str
    help: str
    labels: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{KEY_PREFIX}counter:{self.name}"


#: Seconds; from a fraction of a second (a warm start on test:///) to minutes (a class).
DURATION_BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)


@dataclass(frozen=True)
class Histogram:
    """Observed values in buckets (upper bounds, in seconds), with their sum and count."""

    name: str
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = field(default=DURATION_BUCKETS)

    @property
    def key(self) -> str:
        return f"{KEY_PREFIX}histogram:{self.name}"


DESKTOP_STARTS = Counter(
    "isard_desktop_starts",
    "Desktops asked to start (moved to starting), by the status they started from.",
    ("from_status",),
)
DESKTOP_FAILURES = Counter(
    "isard_desktop_failures",
    "Desktops that became failed, by the status they were in and the kind of reason.",
    ("from_status", "reason"),
)
DESKTOP_START_TO_RUNNING = Histogram(
    "isard_desktop_start_to_running_seconds",
    "From starting to started: the queue, placement, disk checks and the boot call.",
)
DESKTOP_BOOT = Histogram(
    "isard_desktop_boot_seconds",
    "The hypervisor's part of a start: defining the domain and starting it, per host.",
    ("hypervisor",),
)
TASK_LATENCY = Histogram(
    "isard_task_latency_seconds",
    "From a task being sent (or its countdown ending) to a worker starting it, per queue.",
    ("queue",),
)
VIEWER_CONNECTIONS_OPENED = Counter(
    "isard_viewer_connections_opened",
    "Viewer connections opened: the browser's websocket proxy, the SPICE/RDP gateway.",
    ("kind",),
)
VIEWER_CONNECTIONS_CLOSED = Counter(
    "isard_viewer_connections_closed",
    "Viewer connections closed (opened minus closed: those open now).",
    ("kind",),
)
SIGN_IN_ATTEMPTS = Counter(
    "isard_sign_in_attempts",
    "Sign-ins whose password was checked (the page, the admin, the API).",
)
SIGN_INS = Counter("isard_sign_ins", "Sign-ins with a right password.")
SIGN_IN_REFUSALS = Counter(
    "isard_sign_in_refusals",
    "Attempts refused by a rate limit before anything was checked, by limit.",
    ("limit",),
)

COUNTERS: tuple[Counter, ...] = (
    DESKTOP_STARTS,
    DESKTOP_FAILURES,
    VIEWER_CONNECTIONS_OPENED,
    VIEWER_CONNECTIONS_CLOSED,
    SIGN_IN_ATTEMPTS,
    SIGN_INS,
    SIGN_IN_REFUSALS,
)
HISTOGRAMS: tuple[Histogram, ...] = (
    DESKTOP_START_TO_RUNNING,
    DESKTOP_BOOT,
    TASK_LATENCY,
)

_clients: dict[str, redis.Redis] = {}


def metrics_redis() -> redis.Redis:
    """One client per Redis URL, with short timeouts: a metric is never worth a wait."""
    url = settings.REDIS_URL
    client = _clients.get(url)
    if client is None:
        client = _clients[url] = redis.Redis.from_url(
            url, socket_connect_timeout=1, socket_timeout=1
        )
    return client


def _field(metric: Counter | Histogram, labels: Mapping[str, str]) -> str:
    if set(labels) != set(metric.labels):
        raise ValueError(f"{metric.name} takes labels {metric.labels}, not {sorted(labels)}")
    return json.dumps([str(labels[name]) for name in metric.labels])


def count(counter: Counter, amount: int = 1, **labels: str) -> None:
    """Add `amount` to `counter` for these label values."""
    name = _field(counter, labels)
    try:
        metrics_redis().hincrby(counter.key, name, amount)
    except RedisError as error:
        logger.warning("metric %s not counted: %s", counter.name, error)


def bucket_of(histogram: Histogram, value: float) -> str:
    """The smallest bucket bound `value` fits under, or "+Inf"."""
    for bound in histogram.buckets:
        if value <= bound:
            return repr(float(bound))
    return "+Inf"


def observe(histogram: Histogram, value: float, **labels: str) -> None:
    """Record one observation (seconds) in `histogram` for these label values."""
    if math.isnan(value) or value < 0:
        return  # a clock step backwards says nothing about the duration
    name = _field(histogram, labels)
    try:
        pipe = metrics_redis().pipeline(transaction=True)
        pipe.hincrby(histogram.key, f"{name}|{bucket_of(histogram, value)}", 1)
        pipe.hincrbyfloat(histogram.key, f"{name}|sum", value)
        pipe.hincrby(histogram.key, f"{name}|count", 1)
        pipe.execute()
    except RedisError as error:
        logger.warning("metric %s not observed: %s", histogram.name, error)


@dataclass(frozen=True)
class CounterSample:
    labels: tuple[str, ...]
    value: float


@dataclass(frozen=True)
class HistogramSample:
    """One label set of a histogram: cumulative (bound, count) pairs ending with +Inf."""

    labels: tuple[str, ...]
    buckets: list[tuple[str, float]]
    sum: float


def _decode(raw: Mapping[bytes, bytes]) -> dict[str, str]:
    return {key.decode(): value.decode() for key, value in raw.items()}


def read_counters(
    client: redis.Redis, counters: Sequence[Counter] = COUNTERS
) -> dict[str, list[CounterSample]]:
    """Every counter's samples as they are in Redis now (one round trip)."""
    pipe = client.pipeline(transaction=False)
    for counter in counters:
        pipe.hgetall(counter.key)
    answers = pipe.execute()
    result: dict[str, list[CounterSample]] = {}
    for counter, raw in zip(counters, answers, strict=True):
        samples = [
            CounterSample(tuple(json.loads(name)), float(value))
            for name, value in sorted(_decode(raw).items())
        ]
        result[counter.name] = samples
    return result


def read_histograms(
    client: redis.Redis, histograms: Sequence[Histogram] = HISTOGRAMS
) -> dict[str, list[HistogramSample]]:
    """Every histogram's samples as they are in Redis now, buckets made cumulative."""
    pipe = client.pipeline(transaction=False)
    for histogram in histograms:
        pipe.hgetall(histogram.key)
    answers = pipe.execute()
    result: dict[str, list[HistogramSample]] = {}
    for histogram, raw in zip(histograms, answers, strict=True):
        per_labels: dict[str, dict[str, str]] = {}
        for name, value in _decode(raw).items():
            labels, _, part = name.rpartition("|")
            per_labels.setdefault(labels, {})[part] = value
        bounds = [repr(float(bound)) for bound in histogram.buckets] + ["+Inf"]
        samples = []
        for labels, parts in sorted(per_labels.items()):
            running = 0.0
            buckets = []
            for bound in bounds:
                running += float(parts.get(bound, 0))
                buckets.append((bound, running))
            samples.append(
                HistogramSample(tuple(json.loads(labels)), buckets, float(parts.get("sum", 0)))
            )
        result[histogram.name] = samples
    return result


def reset_all(client: redis.Redis | None = None) -> None:
    """Forget every counter and histogram (tests; a fresh start of a test platform)."""
    target = client or metrics_redis()
    keys = [counter.key for counter in COUNTERS] + [histogram.key for histogram in HISTOGRAMS]
    target.delete(*keys)


#: The message header a sent task carries: when it was sent (seconds since the epoch).
SENT_AT_HEADER = "isard_sent_at"


def task_sent(headers: dict[str, object], *, now: float) -> None:
    """Stamp a task's message as it is sent (Celery's `before_task_publish`)."""
    headers.setdefault(SENT_AT_HEADER, now)


def task_started(*, sent_at: object, eta: object, queue: str, now: float) -> None:
    """A worker starts a task: how long it waited in `queue` (Celery's `task_prerun`).

    A task sent with a countdown waits from its due time, not from when it was sent.
    """
    if not isinstance(sent_at, int | float):
        return  # sent by something that does not stamp (an old process, celery call)
    since = float(sent_at)
    if isinstance(eta, str) and eta:
        try:
            due = datetime.fromisoformat(eta).timestamp()
        except ValueError:
            due = since
        since = max(since, due)
    observe(TASK_LATENCY, max(0.0, now - since), queue=queue or "celery")
