"""Listen to libvirt lifecycle events of every hypervisor and apply them at once.

The periodic reconciliation catches what this misses (a listener restart, a host that
was unreachable); this listener makes a guest that powers itself off show as stopped
within milliseconds instead of at the next reconciliation.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand
from django.db import close_old_connections

from desktops.services import desktop_for_domain, desktop_sync_state
from hypervisors.drivers import libvirt_driver
from hypervisors.models import Hypervisor


def apply_event(uri: str, domain_name: str, state: libvirt_driver.DomainState) -> None:
    close_old_connections()
    desktop = desktop_for_domain(domain_name)
    if desktop is None or desktop.hypervisor is None or desktop.hypervisor.uri != uri:
        return
    desktop_sync_state(desktop=desktop, state=state, source="libvirt event")


class Command(BaseCommand):
    help = "Apply libvirt lifecycle events to desktop statuses."

    def handle(self, *args: Any, **options: Any) -> None:
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        uris = sorted(set(Hypervisor.objects.values_list("uri", flat=True)))
        self.stdout.write(f"listening to {', '.join(uris) or 'no hypervisors'}")
        libvirt_driver.run_event_loop(uris, apply_event, stop)
