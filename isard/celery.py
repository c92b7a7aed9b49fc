"""The Celery application, configured from Django settings (`CELERY_*`)."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "isard.settings")

app = Celery("isard")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

app.conf.beat_schedule = {
    "reconcile-hypervisors": {
        "task": "hypervisors.tasks.reconcile_all_hypervisors",
        "schedule": 15.0,
    },
    "purge-recycle-bin": {
        "task": "desktops.tasks.purge_recycle_bin",
        "schedule": 3600.0,
    },
}
