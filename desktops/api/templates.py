"""/api/v1/templates/: the templates' endpoints, with making a template of a desktop.

The templates room serves everything about templates (`templates_app.api.views`) but
cannot see desktops; making a template of one is the desktops room's work
(`desktops.services.templating`), so the full endpoint is assembled here.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api.views import request_user
from desktops.models import Desktop
from desktops.permissions import can_act_on_desktop
from desktops.services.templating import template_from_desktop
from isard.core.errors import NotFoundError
from templates_app.api import views as template_views
from templates_app.api.serializers import TemplateFromDesktopSerializer, TemplateSerializer


@extend_schema(tags=["templates"])
class TemplateViewSet(template_views.TemplateViewSet):
    """Templates you may use or manage."""

    @extend_schema(request=TemplateFromDesktopSerializer, responses={202: TemplateSerializer})
    def create(self, request: Request) -> Response:
        """Make a template from one of your stopped desktops (a task; poll its status)."""
        serializer = TemplateFromDesktopSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        actor = request_user(request)
        desktop = Desktop.objects.filter(pk=data["desktop"]).first()
        if desktop is None or not can_act_on_desktop(actor, desktop):
            raise NotFoundError("No such desktop.", extra={"desktop": data["desktop"]})
        template = template_from_desktop(
            actor=actor, desktop_id=desktop.pk, name=data["name"], description=data["description"]
        )
        return self._answer(template, status.HTTP_202_ACCEPTED)
