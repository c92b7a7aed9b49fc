"""Configuration checks run before the platform starts (`manage.py isard_preflight`).

Each problem becomes one line that names the setting and what to do, instead of a
traceback from deep inside Celery or libvirt minutes later. They are registered as
deployment checks with their own tag so that ordinary commands (migrate, tests) stay
fast and do not need libvirt or Redis.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import redis
from django.conf import settings
from django.core.checks import Error, Tags, register
from django.core.checks import Warning as CheckWarning

from desktops.viewer.services import VIEWER_TLS_MODES
from hypervisors.drivers import libvirt_driver
from hypervisors.host_access import kvm_access_problem

TAG = "isard_runtime"


@register(TAG, deploy=True)
def check_storage_root(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    root = Path(settings.ISARD_STORAGE_ROOT)
    if not root.is_dir():
        return [
            Error(
                f"ISARD_STORAGE_ROOT={root} does not exist: create the directory or point the "
                "setting at an existing one.",
                id="isard.E001",
            )
        ]
    if not os.access(root, os.W_OK | os.X_OK):
        return [Error(f"ISARD_STORAGE_ROOT={root} is not writable by this user.", id="isard.E002")]
    return []


@register(TAG, deploy=True)
def check_redis(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    try:
        client = redis.Redis.from_url(
            settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=2
        )
        client.ping()
        client.close()
    except (redis.RedisError, ValueError) as error:
        return [
            Error(
                f"REDIS_URL={settings.REDIS_URL} does not answer ({error}): start Redis or fix "
                "the setting.",
                id="isard.E003",
            )
        ]
    return []


@register(TAG, deploy=True)
def check_libvirt(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    try:
        libvirt_driver.ping(settings.ISARD_LIBVIRT_URI)
    except libvirt_driver.DriverError as error:
        return [
            Error(
                f"ISARD_LIBVIRT_URI={settings.ISARD_LIBVIRT_URI} does not answer ({error}): "
                "start libvirtd (and virtlogd) or fix the setting.",
                id="isard.E004",
            )
        ]
    return []


@register(TAG, deploy=True)
def check_kvm_device(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """Only for this machine's own libvirt: a remote host's /dev/kvm is checked there."""
    if settings.ISARD_LIBVIRT_URI != "qemu:///system":
        return []
    problem = kvm_access_problem()
    return [Error(problem, id="isard.E006")] if problem else []


@register(TAG, deploy=True)
def check_accelerator_setting(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    if settings.ISARD_ACCELERATOR not in ("auto", "kvm", "qemu"):
        return [
            Error(
                f"ISARD_ACCELERATOR={settings.ISARD_ACCELERATOR!r} is not one of auto, kvm, qemu.",
                id="isard.E005",
            )
        ]
    return []


@register(TAG, deploy=True)
def check_viewer_tls_setting(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    if settings.ISARD_VIEWER_TLS not in VIEWER_TLS_MODES:
        return [
            Error(
                f"ISARD_VIEWER_TLS={settings.ISARD_VIEWER_TLS!r} is not one of "
                f"{', '.join(VIEWER_TLS_MODES)}.",
                id="isard.E050",
            )
        ]
    return []


@register(TAG, deploy=True)
def check_spice_gateway(app_configs: Any = None, **kwargs: Any) -> list[Error | CheckWarning]:
    """The gateway is how remote-viewer on a student's own device reaches a desktop."""
    shared = settings.ISARD_GATEWAY_SHARED and settings.ISARD_TLS_PORT
    if not shared and not settings.ISARD_GATEWAY_PORT:
        why = "ISARD_TLS_PORT=0" if settings.ISARD_GATEWAY_SHARED else "ISARD_GATEWAY_SHARED=false"
        return [
            CheckWarning(
                f"the SPICE gateway is off ({why} and ISARD_GATEWAY_PORT=0): .vv files name "
                "the display's own address, which only the hypervisor's network reaches.",
                id="isard.W050",
            )
        ]
    if shared:
        directory = Path(settings.ISARD_GATEWAY_SOCKET).parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass  # said below
        if not os.access(directory, os.W_OK | os.X_OK):
            return [
                Error(
                    f"ISARD_GATEWAY_SOCKET={settings.ISARD_GATEWAY_SOCKET}: this user cannot "
                    f"write in {directory}, so the gateway cannot take the HTTPS port's "
                    "CONNECTs; choose another path.",
                    id="isard.E051",
                )
            ]
    return []


@register(Tags.security, deploy=True)
def check_secret_key_is_not_the_development_one(
    app_configs: Any = None, **kwargs: Any
) -> list[CheckWarning]:
    """Django's own check passes this key (long, varied): it only fails on the demo's."""
    if getattr(settings, "DEVELOPMENT_SECRET_KEY", None) != settings.SECRET_KEY:
        return []
    return [
        CheckWarning(
            "ISARD_SECRET_KEY is not set: the development key is in the source, so anyone can "
            "sign sessions and password-reset links. Set a long random one.",
            id="isard.W001",
        )
    ]
