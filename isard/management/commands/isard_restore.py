"""Restore an archive written by `isard_backup` into a freshly migrated install."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from isard.backup.services import backup_restore
from isard.core.errors import ApplicationError


class Command(BaseCommand):
    help = (
        "Check every file of ARCHIVE against its manifest, then load the database and put "
        "the disks, the PKI and .env back. The database must be empty unless --force."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("archive", type=Path)
        parser.add_argument(
            "--force",
            action="store_true",
            help="Replace a non-empty database (flushed first) and existing disk files.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            backup_restore(
                archive=options["archive"],
                force=options["force"],
                say=lambda line: self.stdout.write(line),
            )
        except ApplicationError as error:
            raise CommandError(error.message) from error
