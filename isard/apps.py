from __future__ import annotations

from django.apps import AppConfig


class IsardConfig(AppConfig):
    name = "isard"
    verbose_name = "isard platform"

    def ready(self) -> None:
        from isard import checks  # noqa: F401  (registers the system checks)
