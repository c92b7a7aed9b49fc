"""Plumbing of the fleet services: their settings, read with safe defaults, and fleet locks.

The settings are read here, not at import, so tests can change them with pytest-django's
`settings` fixture; each has a default so the platform runs before `.env` names them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from hypervisors.choices import DrainPolicy, PlacementPolicy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FleetSettings:
    placement_policy: PlacementPolicy
    #: How long a start is charged to its host at most (Isard charges 30 s).
    charge_seconds: float
    #: How long a host may stay silent before it is marked offline.
    offline_grace_seconds: float
    #: How long one host's stats may take before the host counts as silent.
    sample_timeout_seconds: float
    drain_policy: DrainPolicy
    rebalance_enabled: bool
    rebalance_max_moves: int
    #: Spread of memory use (max minus min share) from which the rebalancer moves desktops.
    rebalance_threshold: float
    migration_timeout_seconds: float


def _choice(name: str, value: str, choices: type[PlacementPolicy] | type[DrainPolicy]) -> str:
    if value not in choices.values:
        raise ImproperlyConfigured(f"{name}={value!r} is not one of {', '.join(choices.values)}.")
    return value


def fleet_settings() -> FleetSettings:
    """The fleet settings now; a wrong value raises ImproperlyConfigured naming it."""
    policy = getattr(settings, "ISARD_PLACEMENT_POLICY", PlacementPolicy.MOST_FREE_MEMORY)
    drain = getattr(settings, "ISARD_DRAIN_POLICY", DrainPolicy.MIGRATE_OR_STOP)
    return FleetSettings(
        placement_policy=PlacementPolicy(
            _choice("ISARD_PLACEMENT_POLICY", str(policy), PlacementPolicy)
        ),
        charge_seconds=float(getattr(settings, "ISARD_PLACEMENT_CHARGE_SECONDS", 30)),
        offline_grace_seconds=float(
            getattr(settings, "ISARD_HYPERVISOR_OFFLINE_GRACE_SECONDS", 30)
        ),
        sample_timeout_seconds=float(
            getattr(settings, "ISARD_HYPERVISOR_SAMPLE_TIMEOUT_SECONDS", 10)
        ),
        drain_policy=DrainPolicy(_choice("ISARD_DRAIN_POLICY", str(drain), DrainPolicy)),
        rebalance_enabled=bool(getattr(settings, "ISARD_REBALANCE_ENABLED", True)),
        rebalance_max_moves=int(getattr(settings, "ISARD_REBALANCE_MAX_MOVES", 4)),
        rebalance_threshold=float(getattr(settings, "ISARD_REBALANCE_THRESHOLD", 0.25)),
        migration_timeout_seconds=float(getattr(settings, "ISARD_MIGRATION_TIMEOUT_SECONDS", 300)),
    )


# --- locks shared by every worker process ---------------------------------------------------

_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()


def _redis() -> redis.Redis:
    url = settings.REDIS_URL
    with _clients_lock:
        client = _clients.get(url)
        if client is None:
            client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
            _clients[url] = client
        return client


class LockUnavailableError(Exception):
    """Someone else holds the lock, or Redis (which keeps the locks) does not answer."""


@contextmanager
def fleet_lock(name: str, *, timeout: float, wait: float) -> Iterator[None]:
    """Hold the Redis lock `<namespace>:lock:<name>` across every worker process and host.

    `timeout` frees the lock by itself if its holder dies; `wait` is how long to queue
    for it (0: do not wait). Raises LockUnavailableError when it is held or Redis fails;
    the caller decides whether to go on unlocked or to give up. The namespace
    (`ISARD_LOCK_NAMESPACE`) keeps installations, or test runs, sharing a Redis apart.
    """
    namespace = getattr(settings, "ISARD_LOCK_NAMESPACE", "isard")
    lock = _redis().lock(
        f"{namespace}:lock:{name}",
        timeout=timeout,
        blocking=wait > 0,
        blocking_timeout=wait if wait > 0 else None,
        thread_local=False,
    )
    try:
        acquired = lock.acquire()
    except redis.RedisError as error:
        raise LockUnavailableError(f"the lock {name} is unavailable: {error}") from error
    if not acquired:
        raise LockUnavailableError(f"the lock {name} is held by another worker")
    try:
        yield
    finally:
        try:
            lock.release()
        except redis.RedisError as error:
            # It expired (the holder ran past `timeout`) or Redis went away: nothing to undo.
            logger.warning("releasing the lock %s failed: %s", name, error)
