"""Prepare a fresh installation; safe to run at every start (it only adds what is missing)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from accounts.demo import demo_people_ensure
from desktops.fleet.monitoring import hypervisor_refresh
from hypervisors.demo import demo_image_ensure
from hypervisors.guest_image import GuestImageError
from hypervisors.models import Hypervisor
from hypervisors.services.accelerator import hypervisor_detect_accelerator
from hypervisors.services.hosts import hypervisor_register
from hypervisors.services.pools import storage_pools_ensure
from templates_app.demo import DEMO_TEMPLATE_NAME, demo_template_ensure


class Command(BaseCommand):
    help = "Create storage pools, register this machine as a hypervisor, load demo data."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--no-demo", action="store_true", help="Skip the demo people.")
        parser.add_argument("--reprobe", action="store_true", help="Detect the accelerator again.")

    def handle(self, *args: Any, **options: Any) -> None:
        storage_pools_ensure()
        created = not Hypervisor.objects.filter(name=settings.ISARD_LOCAL_HYPERVISOR_NAME).exists()
        hypervisor = hypervisor_register(
            name=settings.ISARD_LOCAL_HYPERVISOR_NAME, uri=settings.ISARD_LIBVIRT_URI
        )
        if created:
            Hypervisor.objects.filter(pk=hypervisor.pk).update(
                accelerator_setting=settings.ISARD_ACCELERATOR
            )
            hypervisor.refresh_from_db()
        try:
            image = demo_image_ensure()
        except GuestImageError as error:
            raise CommandError(f"cannot build the demo guest image: {error}") from error
        demo_template_ensure()
        self.stdout.write(f"template “{DEMO_TEMPLATE_NAME}” ready")
        hypervisor = hypervisor_refresh(hypervisor=hypervisor)
        if hypervisor.last_error:
            raise CommandError(f"hypervisor {hypervisor.name}: {hypervisor.last_error}")
        hypervisor = hypervisor_detect_accelerator(
            hypervisor=hypervisor, probe_image=image, force=options["reprobe"]
        )
        if not hypervisor.accelerator:
            raise CommandError(
                f"no guest could boot on {hypervisor.uri}: {hypervisor.accelerator_detail}"
            )
        self.stdout.write(
            f"hypervisor “{hypervisor.name}” ({hypervisor.uri}): accelerator "
            f"{hypervisor.accelerator} ({hypervisor.accelerator_detail})"
        )
        if not options["no_demo"]:
            logins = demo_people_ensure()
            self.stdout.write(
                "demo logins: "
                + ", ".join(f"{login.username}/{login.password}" for login in logins)
            )
