"""The Celery application, configured from Django settings (`CELERY_*`)."""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery
from celery.signals import before_task_publish, task_prerun

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "isard.settings")

app = Celery("isard")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# A desktop's libvirt work goes to the queue of the host it is placed on: the typed calls
# that name a host set it (`desktops.task_calls`); everything else uses the default queue.

from django.conf import settings  # noqa: E402  (after DJANGO_SETTINGS_MODULE is set)

from accounts import task_calls as accounts_tasks  # noqa: E402
from desktops import task_calls as desktops_tasks  # noqa: E402
from isard.core import metrics  # noqa: E402
from templates_app import task_calls as templates_tasks  # noqa: E402

app.conf.beat_schedule = {
    "reconcile-hypervisors": {
        "task": desktops_tasks.RECONCILE_ALL_HYPERVISORS,
        "schedule": 15.0,
    },
    "ldap-sync": {
        "task": accounts_tasks.LDAP_SYNC,
        "schedule": float(settings.ISARD_LDAP_SYNC_INTERVAL_SECONDS),
    },
    "recover-stuck-desktops": {
        "task": desktops_tasks.RECOVER_STUCK_DESKTOPS,
        "schedule": 60.0,
    },
    "rebalance-hypervisors": {
        "task": desktops_tasks.REBALANCE_HYPERVISORS,
        "schedule": 300.0,
    },
    "purge-recycle-bin": {
        "task": desktops_tasks.PURGE_RECYCLE_BIN,
        "schedule": 3600.0,
    },
    "expire-media-uploads": {
        "task": templates_tasks.EXPIRE_MEDIA_UPLOADS,
        "schedule": 3600.0,
    },
    "enforce-time-limits": {
        "task": desktops_tasks.ENFORCE_TIME_LIMITS,
        "schedule": 60.0,
    },
    "shut-down-idle": {
        "task": desktops_tasks.SHUT_DOWN_IDLE,
        "schedule": 60.0,
    },
    "refill-pools": {
        "task": desktops_tasks.REFILL_POOLS,
        "schedule": 30.0,
    },
    "sum-usage": {
        "task": desktops_tasks.SUM_USAGE,
        "schedule": 900.0,
    },
    "purge-viewer-tokens": {
        "task": desktops_tasks.PURGE_VIEWER_TOKENS,
        "schedule": 600.0,
    },
}


# Task latency per queue (isard.core.metrics): the sender stamps the message, the worker
# that starts it measures the wait.
@before_task_publish.connect
def _stamp_sent(headers: dict[str, Any] | None = None, **_kwargs: Any) -> None:
    if headers is not None:
        metrics.task_sent(headers, now=time.time())


@task_prerun.connect
def _measure_wait(task: Any = None, **_kwargs: Any) -> None:
    if task is None:
        return
    request = task.request
    delivery = request.delivery_info or {}
    metrics.task_started(
        sent_at=getattr(request, metrics.SENT_AT_HEADER, None),
        eta=request.eta,
        queue=str(delivery.get("routing_key") or ""),
        now=time.time(),
    )
