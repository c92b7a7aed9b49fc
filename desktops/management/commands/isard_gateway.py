"""Serve the SPICE gateway (the Procfile's `gateway:` line; `desktops.viewer.gateway`).

It takes the CONNECTs the web workers pass on from the HTTPS port over the Unix socket
`ISARD_GATEWAY_SOCKET` (with `ISARD_GATEWAY_SHARED` and an HTTPS port), and listens on
`ISARD_GATEWAY_BIND:ISARD_GATEWAY_PORT` too when that port is set. With neither the
gateway is off: the command says so and waits for Ctrl-C or SIGTERM, so the supervisor
does not restart it over and over.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from desktops.viewer.gateway import DEFAULT_IDLE_SECONDS, gateway_start, gateway_take_handoffs


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
        shared = None
        if settings.ISARD_GATEWAY_SHARED and settings.ISARD_TLS_PORT:
            shared = Path(settings.ISARD_GATEWAY_SOCKET)
        asyncio.run(self.serve(bind, port, shared, idle))

    async def serve(self, bind: str, port: int, shared: Path | None, idle: float) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        if not port and shared is None:
            self.stdout.write(
                "SPICE gateway off (no HTTPS port to share, or ISARD_GATEWAY_SHARED=false, "
                "and ISARD_GATEWAY_PORT=0)."
            )
            await stop.wait()
            return
        stop_taking = None
        server = None
        if shared is not None:
            stop_taking = gateway_take_handoffs(shared, idle_seconds=idle)
            self.stdout.write(
                f"SPICE gateway on the HTTPS port {settings.ISARD_TLS_PORT} (from {shared})"
            )
        if port:
            server = await gateway_start(host=bind, port=port, idle_seconds=idle)
            self.stdout.write(f"SPICE gateway on {bind}:{port}")
        self.stdout.flush()
        try:
            await stop.wait()
        finally:
            if server is not None:
                server.close()
            if stop_taking is not None:
                await stop_taking()
