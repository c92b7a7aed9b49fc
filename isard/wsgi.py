"""WSGI entry point (management and tests; production serves ASGI through Daphne)."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "isard.settings")
application = get_wsgi_application()
