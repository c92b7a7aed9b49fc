"""Serve the platform: plain HTTP on ISARD_PORT, HTTPS and wss on ISARD_TLS_PORT, with one
Daphne child per CPU (ISARD_WEB_WORKERS). The `web:` line of the Procfile runs this."""

from __future__ import annotations

import dataclasses
import logging
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from isard.webserver import WebServerError, serve, web_config_from_settings


class Command(BaseCommand):
    help = "Run the web tier: Daphne children on shared HTTP and HTTPS sockets."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--workers", type=int, help="Daphne children (default: ISARD_WEB_WORKERS)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        config = web_config_from_settings()
        if options["workers"] is not None:
            config = dataclasses.replace(config, workers=options["workers"])
        logger = logging.getLogger("isard.web")
        if settings.DEBUG:
            logger.warning(
                "ISARD_DEBUG is on: errors and unknown URLs show code, settings and every URL "
                "pattern to whoever asks; never let a network reach this"
            )
        logger.info(
            "serving %s with %d Daphne workers",
            " and ".join(listener.url for listener in config.listeners),
            config.workers,
        )
        try:
            status = serve(config)
        except WebServerError as error:
            raise CommandError(error.message) from error
        if status:
            sys.exit(status)
