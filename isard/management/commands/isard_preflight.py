"""Check the configuration before starting; one line per problem, exit status 1 if any."""

from __future__ import annotations

from typing import Any

from django.core.checks import run_checks
from django.core.management.base import BaseCommand, CommandError

from isard.checks import TAG


class Command(BaseCommand):
    help = "Check storage, Redis and libvirt settings before the platform starts."
    requires_system_checks: list[str] = []

    def handle(self, *args: Any, **options: Any) -> None:
        problems = run_checks(tags=[TAG], include_deployment_checks=True)
        if problems:
            raise CommandError("\n".join(f"configuration error: {p.msg}" for p in problems))
        self.stdout.write("configuration ok")
