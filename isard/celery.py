"""The Celery application, configured from Django settings (`CELERY_*`)."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "isard.settings")

app = Celery("isard")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# A desktop's libvirt work goes to the queue of the host it is placed on (blank: default).
app.conf.task_routes = ("hypervisors.routing.route_task",)

from django.conf import settings  # noqa: E402  (after DJANGO_SETTINGS_MODULE is set)

app.conf.beat_schedule = {
    "reconcile-hypervisors": {
        "task": "hypervisors.tasks.reconcile_all_hypervisors",
        "schedule": 15.0,
    },
    "ldap-sync": {
        "task": "accounts.tasks.ldap_sync_task",
        "schedule": float(settings.ISARD_LDAP_SYNC_INTERVAL_SECONDS),
    },
    "recover-stuck-desktops": {
        "task": "desktops.tasks.recover_stuck_desktops",
        "schedule": 60.0,
    },
    "rebalance-hypervisors": {
        "task": "hypervisors.tasks.rebalance_hypervisors",
        "schedule": 300.0,
    },
    "purge-recycle-bin": {
        "task": "desktops.tasks.purge_recycle_bin",
        "schedule": 3600.0,
    },
    "purge-viewer-tokens": {
        "task": "desktops.tasks.purge_viewer_tokens",
        "schedule": 600.0,
    },
}
