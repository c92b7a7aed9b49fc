from __future__ import annotations

from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "People and courses"

    def ready(self) -> None:
        from accounts import ldap_directory  # noqa: F401  (registers the LDAP checks)
