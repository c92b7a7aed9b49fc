"""Back up this installation into one archive (a directory, or a .tar)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from isard.backup.services import BackupError, backup_create
from isard.core.errors import ApplicationError


class Command(BaseCommand):
    help = (
        "Write the database, the template disks with their backing chains, the PKI and "
        ".env into one archive (a directory, or a .tar file if OUT ends in .tar)."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--out", required=True, type=Path, help="New directory or .tar file.")
        parser.add_argument(
            "--with-desktops",
            action="store_true",
            help="Also copy stopped desktops' overlays (running ones are skipped, with a warning).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            backup_create(
                out=options["out"],
                with_desktops=options["with_desktops"],
                say=lambda line: self.stdout.write(line),
            )
        except (BackupError, ApplicationError) as error:
            raise CommandError(error.message) from error
