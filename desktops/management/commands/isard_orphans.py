"""List (and, once confirmed, remove) files in the storage pools that no row names."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.template.defaultfilters import filesizeformat

from desktops.services.orphans import orphan_files, orphan_files_remove


class Command(BaseCommand):
    help = (
        "List the files in the storage pools that no disk or media names (older than "
        "ISARD_ORPHAN_GRACE_SECONDS); with --delete, remove them after confirmation."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--delete", action="store_true", help="remove the files listed")
        parser.add_argument("--yes", action="store_true", help="do not ask before removing")

    def handle(self, *args: Any, **options: Any) -> None:
        found = orphan_files()
        total = sum(orphan.size_bytes for orphan in found)
        for orphan in found:
            self.stdout.write(
                f"{orphan.path}\t{filesizeformat(orphan.size_bytes)}\t"
                f"{orphan.modified_at:%Y-%m-%d %H:%M} UTC"
            )
        self.stdout.write(f"{len(found)} files no disk or media names, {filesizeformat(total)}")
        if not options["delete"] or not found:
            return
        if not options["yes"]:
            answer = input(f"Remove these {len(found)} files for good? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                raise CommandError("nothing was removed")
        removed = orphan_files_remove(files=found)
        self.stdout.write(f"removed {removed} files")
