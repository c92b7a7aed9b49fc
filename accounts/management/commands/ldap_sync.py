"""Sync people, courses and memberships from the LDAP groups mapped to courses."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from accounts.ldap.sync import ldap_sync
from isard.core.errors import ApplicationError


class Command(BaseCommand):
    help = (
        "Create missing people and courses from the mapped LDAP groups, add and remove "
        "memberships, and disable (never delete) people who left every group. Prints what "
        "changed and which directory entries were skipped."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="Show what would change; save nothing."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            report = ldap_sync(dry_run=options["dry_run"])
        except ApplicationError as error:
            raise CommandError(error.message) from error
        self.stdout.write(str(report))
