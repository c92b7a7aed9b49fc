"""Add a hypervisor host from the command line and check it through its own worker.

    manage.py isard_hypervisor add lab2 qemu+tls://lab2.school.lan/system --queue hv.lab2
    manage.py isard_hypervisor check lab2
    manage.py isard_hypervisor list

`add` registers (or changes) the host and samples it once from here; `check` sends a task
to the host's queue and prints what the worker that takes it sees (its libvirt, and
whether it can write in every storage pool), so a new host is proven end to end before a
class starts on it.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from desktops.fleet.monitoring import hypervisor_refresh
from hypervisors.choices import AcceleratorSetting
from hypervisors.models import Hypervisor
from hypervisors.routing import hypervisor_queue
from hypervisors.services.hosts import hypervisor_add, hypervisor_check
from isard.core.errors import ApplicationError


class Command(BaseCommand):
    help = "Add, check or list hypervisor hosts."

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(dest="action", required=True)
        add = commands.add_parser(
            "add",
            help="register a host or change a registered one (options left out keep their "
            "value; a new host gets no queue, no tags and every pool)",
        )
        add.add_argument("name")
        add.add_argument("uri", help="libvirt URI, e.g. qemu+ssh://root@lab2/system")
        add.add_argument(
            "--queue",
            default=None,
            help='Celery queue of the host\'s own worker, e.g. hv.lab2 ("": the central worker)',
        )
        add.add_argument(
            "--tag", action="append", default=None, dest="tags", help="a host tag (repeat)"
        )
        add.add_argument(
            "--pool",
            action="append",
            default=None,
            dest="pools",
            help="a storage pool the host reaches (repeat; default: every pool)",
        )
        add.add_argument("--accelerator", choices=AcceleratorSetting.values, default=None)
        add.add_argument(
            "--migration-address", default=None, help="address other hosts migrate guests to"
        )
        check = commands.add_parser("check", help="ask the host's own worker what it sees")
        check.add_argument("name")
        check.add_argument("--timeout", type=float, default=30.0)
        commands.add_parser("list", help="every host with its queue and state")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            getattr(self, f"do_{options['action']}")(**options)
        except ApplicationError as error:
            raise CommandError(error.message) from error

    def do_add(self, **options: Any) -> None:
        hypervisor = hypervisor_add(
            name=options["name"],
            uri=options["uri"],
            queue=options["queue"],
            tags=options["tags"],
            pool_names=options["pools"],
            accelerator=options["accelerator"],
            migration_address=options["migration_address"],
        )
        hypervisor = hypervisor_refresh(hypervisor=hypervisor)
        self.stdout.write(
            f"{hypervisor.name}: {hypervisor.uri}, queue {hypervisor_queue(hypervisor)}, "
            f"{hypervisor.state}"
            + (f" ({hypervisor.last_error})" if hypervisor.last_error else "")
            + f", {hypervisor.cpus} CPUs, {hypervisor.memory_mib} MiB"
        )

    def do_check(self, **options: Any) -> None:
        hypervisor = Hypervisor.objects.filter(name=options["name"]).first()
        if hypervisor is None:
            raise CommandError(f"No hypervisor named {options['name']}.")
        answer = hypervisor_check(hypervisor=hypervisor, timeout=options["timeout"])
        self.stdout.write(f"worker {answer['worker']} took it from queue {answer['queue']}")
        self.stdout.write(
            f"libvirt {hypervisor.uri}: "
            + (f"answers ({answer['libvirt']})" if answer["libvirt"] else answer["libvirt_error"])
        )
        for path, result in answer["pools"].items():
            self.stdout.write(f"pool {path}: {result}")
        if not answer["ok"]:
            raise CommandError(f"{hypervisor.name} is not ready: see above.")

    def do_list(self, **options: Any) -> None:
        for hypervisor in Hypervisor.objects.order_by("name"):
            self.stdout.write(
                f"{hypervisor.name}\t{hypervisor.uri}\t{hypervisor_queue(hypervisor)}\t"
                f"{hypervisor.mode}\t{hypervisor.state}"
            )
