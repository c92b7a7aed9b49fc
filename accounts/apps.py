from __future__ import annotations

from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "People and courses"

    def ready(self) -> None:
        # Here rather than at the top: both import the models, which Django has not loaded
        # when it imports this module. Importing them registers the LDAP system checks and
        # the directory login's signal receivers.
        from accounts.ldap import backend, checks  # noqa: F401
