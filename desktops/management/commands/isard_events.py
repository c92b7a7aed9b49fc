"""Listen to libvirt lifecycle events of every hypervisor and apply them at once.

The periodic reconciliation catches what this misses (a listener restart, a host that
was unreachable); this listener makes a guest that powers itself off show as stopped
within milliseconds instead of at the next reconciliation. It reads the hypervisors again
every few seconds, so a host added, changed or removed in the admin is followed without a
restart. On a host with its own worker, `--queue hv.lab2` listens to that host only.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections

from desktops.services.reconciliation import desktop_for_domain, desktop_sync_state
from hypervisors.drivers import libvirt_driver
from hypervisors.models import Hypervisor
from hypervisors.routing import default_queue

#: How often the listener reads the hypervisors again (added, changed, removed hosts).
REFRESH_SECONDS = 10.0


def apply_event(uri: str, domain_name: str, state: libvirt_driver.DomainState) -> None:
    desktop = desktop_for_domain(domain_name)
    if desktop is None or desktop.hypervisor is None or desktop.hypervisor.uri != uri:
        return
    desktop_sync_state(desktop=desktop, state=state, source="libvirt event")


def watched_uris(queue: str | None = None) -> list[str]:
    """The URIs of the hypervisors to listen to now: all, or those of one worker queue."""
    hypervisors = Hypervisor.objects.order_by("uri")
    if queue is not None:
        hypervisors = hypervisors.filter(queue="" if queue == default_queue() else queue)
    return sorted(set(hypervisors.values_list("uri", flat=True)))


class Command(BaseCommand):
    help = "Apply libvirt lifecycle events to desktop statuses."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--queue",
            default=None,
            help="listen only to the hypervisors of this worker queue (e.g. hv.lab2, on that "
            "host); default: every hypervisor",
        )
        parser.add_argument(
            "--refresh-seconds",
            type=float,
            default=REFRESH_SECONDS,
            help="how often the list of hypervisors is read again",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        queue = options["queue"]
        watching: list[frozenset[str] | None] = [None]  # printed at start and on changes

        def report(uris: frozenset[str]) -> None:
            if uris != watching[0]:
                watching[0] = uris
                self.stdout.write(f"listening to {', '.join(sorted(uris)) or 'no hypervisors'}")

        def fresh(function: Callable[..., Any]) -> Callable[..., Any]:
            """Drop a database connection the server closed before using it (a long-lived
            process); only here, as tests run these functions inside a transaction."""

            def call(*args: Any) -> Any:
                close_old_connections()
                return function(*args)

            return call

        libvirt_driver.run_event_loop(
            fresh(partial(watched_uris, queue)),
            fresh(apply_event),
            stop,
            refresh_seconds=options["refresh_seconds"],
            on_watch=report,
        )
