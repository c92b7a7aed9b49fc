from __future__ import annotations

from django.apps import AppConfig


class TemplatesAppConfig(AppConfig):
    name = "templates_app"
    verbose_name = "Templates and media"

    def ready(self) -> None:
        # People sit below templates: their quotas and admin forms learn of them here.
        from accounts.admin_scope import choices_register
        from accounts.quotas import usage_source_register
        from templates_app.models import Media, Template
        from templates_app.permissions import media_managed_by, templates_choosable
        from templates_app.usage import media_usage, template_usage

        usage_source_register(template_usage)
        usage_source_register(media_usage)
        choices_register(Template, templates_choosable)
        choices_register(Media, media_managed_by)
