from __future__ import annotations

from django.apps import AppConfig


class HypervisorsConfig(AppConfig):
    name = "hypervisors"
    verbose_name = "Hypervisors and storage"
