from __future__ import annotations

from django.apps import AppConfig


class DesktopsConfig(AppConfig):
    name = "desktops"
    verbose_name = "Desktops"

    def ready(self) -> None:
        # People sit below desktops: their quotas and admin forms learn of desktops here.
        from django.contrib.auth.signals import user_logged_out

        from accounts.admin_scope import choices_register
        from accounts.quotas import usage_source_register
        from desktops.models import Deployment, Desktop, Pool
        from desktops.permissions import desktops_visible_to
        from desktops.pools.selectors import pools_managed_by
        from desktops.receivers import on_sign_out
        from desktops.services.deployments import deployments_visible_to
        from desktops.usage import desktop_usage

        usage_source_register(desktop_usage)
        choices_register(Desktop, desktops_visible_to)
        choices_register(Deployment, deployments_visible_to)
        choices_register(Pool, pools_managed_by)
        user_logged_out.connect(on_sign_out, dispatch_uid="desktops-sign-out")
