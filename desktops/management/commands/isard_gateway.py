"""Serve the SPICE gateway (the Procfile's `gateway:` line; `desktops.viewer.gateway`).

On ISARD_GATEWAY_BIND:ISARD_GATEWAY_PORT. With ISARD_GATEWAY_PORT=0 the gateway is off:
the command says so and waits for Ctrl-C or SIGTERM, so the supervisor does not restart
it over and over.
"""

from __future__ import annotations

import asyncio
import signal

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from desktops.viewer.gateway import DEFAULT_IDLE_SECONDS, gateway_start


class Command(BaseCommand):
    help = "Serve the SPICE gateway: remote-viewer's CONNECT tunnels to desktop displays."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--bind", default=None, help="default: ISARD_GATEWAY_BIND")
        parser.add_argument("--port", type=int, default=None, help="default: ISARD_GATEWAY_PORT")

    def handle(self, *args: object, **options: object) -> None:
        bind = str(options["bind"] or settings.ISARD_GATEWAY_BIND)
        port_option = options["port"]
        port = int(port_option) if isinstance(port_option, int) else settings.ISARD_GATEWAY_PORT
        idle = float(getattr(settings, "ISARD_GATEWAY_IDLE_SECONDS", DEFAULT_IDLE_SECONDS))
        asyncio.run(self.serve(bind, port, idle))

    async def serve(self, bind: str, port: int, idle: float) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        if not port:
            self.stdout.write("SPICE gateway off (ISARD_GATEWAY_PORT=0).")
            await stop.wait()
            return
        server = await gateway_start(host=bind, port=port, idle_seconds=idle)
        self.stdout.write(f"SPICE gateway on {bind}:{port}", ending="\n")
        self.stdout.flush()
        async with server:
            await stop.wait()
