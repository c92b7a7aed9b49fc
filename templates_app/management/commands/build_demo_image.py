"""Build the tiny real Linux guest and register it as the template "Tiny Linux (demo)"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from hypervisors.demo import demo_image_cache_path, guest_kernel_root
from hypervisors.guest_image import GuestImageError, build_tiny_linux
from templates_app.demo import DEMO_TEMPLATE_NAME, demo_template_ensure


class Command(BaseCommand):
    help = "Build the tiny bootable demo guest from Debian packages and register its template."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--output", type=Path, help="Only build the image to this path.")
        parser.add_argument("--rebuild", action="store_true", help="Rebuild the cached image.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            if options["output"]:
                build_tiny_linux(options["output"], kernel_root=guest_kernel_root())
                self.stdout.write(f"built {options['output']}")
                return
            image = demo_image_cache_path()
            if options["rebuild"] or not image.exists():
                image.parent.mkdir(parents=True, exist_ok=True)
                build_tiny_linux(image, kernel_root=guest_kernel_root())
                self.stdout.write(f"built {image}")
        except GuestImageError as error:
            raise CommandError(str(error)) from error
        template = demo_template_ensure()
        self.stdout.write(f"template “{DEMO_TEMPLATE_NAME}” ready (id {template.pk})")
