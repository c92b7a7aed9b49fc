"""Registering hosts, checking them from their own worker, opening them to new desktops."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery import current_app
from celery.exceptions import TimeoutError as CeleryTimeoutError
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from hypervisors import task_calls
from hypervisors.choices import (
    AcceleratorSetting,
    HypervisorMode,
)
from hypervisors.drivers import libvirt_driver
from hypervisors.models import (
    Hypervisor,
    HypervisorEvent,
    StoragePool,
)
from hypervisors.routing import hypervisor_queue
from isard.core.errors import (
    ApplicationError,
    InfrastructureError,
    PermissionDeniedError,
)

if TYPE_CHECKING:
    from accounts.models import User


logger = logging.getLogger(__name__)


def hypervisor_register(*, name: str, uri: str) -> Hypervisor:
    """Register a host (idempotent by name) and let it reach every storage pool."""
    hypervisor, created = Hypervisor.objects.get_or_create(name=name, defaults={"uri": uri})
    if not created and hypervisor.uri != uri:
        hypervisor.uri = uri
        hypervisor.save(update_fields=["uri"])
    if created:
        hypervisor.storage_pools.set(StoragePool.objects.all())
    return hypervisor


#: libvirt URI schemes a hypervisor may be registered with.
URI_SCHEMES = ("qemu", "qemu+ssh", "qemu+tls", "qemu+tcp", "qemu+unix", "qemu+libssh2", "test")


def hypervisor_add(
    *,
    name: str,
    uri: str,
    queue: str | None = None,
    tags: Sequence[str] | None = None,
    pool_names: Sequence[str] | None = None,
    accelerator: AcceleratorSetting | str | None = None,
    migration_address: str | None = None,
) -> Hypervisor:
    """Register a host, or change a registered one, from what an administrator typed.

    `queue` names the Celery queue of the host's own worker (blank: the central worker);
    `pool_names` the storage pools the host reaches. What is None is left as it is (for
    a new host: no queue, no tags, every pool, accelerator detection, libvirt's default
    migration address). Everything is validated before anything is written, with a
    message that says what is wrong.
    """
    name, uri = name.strip(), uri.strip()
    scheme = uri.split(":", 1)[0] if "://" in uri else ""
    if scheme not in URI_SCHEMES:
        raise ApplicationError(
            f"“{uri}” is not a libvirt URI this platform drives: it must start with one of "
            + ", ".join(f"{known}://" for known in URI_SCHEMES)
            + " (e.g. qemu+ssh://root@lab2.school.lan/system)."
        )
    if accelerator is not None and accelerator not in AcceleratorSetting.values:
        raise ApplicationError(
            f"Unknown accelerator “{accelerator}”: one of {', '.join(AcceleratorSetting.values)}."
        )
    pools: list[StoragePool] | None = None
    if pool_names is not None:
        pools = list(StoragePool.objects.filter(name__in=pool_names))
        unknown = sorted(set(pool_names) - {pool.name for pool in pools})
        if unknown:
            known = ", ".join(StoragePool.objects.order_by("name").values_list("name", flat=True))
            raise ApplicationError(
                f"No storage pool named {', '.join(unknown)} (known: {known or 'none'})."
            )
    candidate = Hypervisor.objects.filter(name=name).first() or Hypervisor(name=name)
    candidate.uri = uri
    if queue is not None:
        candidate.queue = queue.strip()
    if tags is not None:
        candidate.tags = sorted({tag.strip() for tag in tags if tag.strip()})
    if accelerator is not None:
        candidate.accelerator_setting = accelerator
    if migration_address is not None:
        candidate.migration_address = migration_address.strip()
    try:
        candidate.full_clean()
    except ValidationError as error:
        problems = "; ".join(
            f"{field}: {' '.join(messages)}" for field, messages in error.message_dict.items()
        )
        raise ApplicationError(f"The hypervisor is not valid: {problems}") from error
    with transaction.atomic():
        hypervisor = hypervisor_register(name=name, uri=uri)
        Hypervisor.objects.filter(pk=hypervisor.pk).update(
            queue=candidate.queue,
            tags=candidate.tags,
            accelerator_setting=candidate.accelerator_setting,
            migration_address=candidate.migration_address,
        )
        if pools is not None:
            hypervisor.storage_pools.set(pools)
        HypervisorEvent.objects.create(
            hypervisor=hypervisor,
            message=f"registered: {uri}, "
            + (
                f"its own worker on queue {candidate.queue}"
                if candidate.queue
                else "served by the central worker"
            ),
        )
    hypervisor.refresh_from_db()
    return hypervisor


def _pool_writable(directory: Path) -> str:
    if not directory.is_dir():
        return "missing"
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".isard-check-"):
            pass
    except OSError as error:
        return f"not writable ({error.strerror})"
    return "ok"


def host_check_local(*, uri: str, pool_paths: Sequence[str]) -> dict[str, Any]:
    """From this process: does libvirt at `uri` answer, can we write in each pool path?

    Run by a host's own worker (`hypervisors.tasks.check_host`), this is what the host
    itself sees: its libvirt, and the shared storage mounted at the same paths as on
    every other host.
    """
    libvirt_host, libvirt_error = "", ""
    try:
        libvirt_host = libvirt_driver.ping(uri)
    except libvirt_driver.DriverError as error:
        libvirt_error = str(error)
    pools = {path: _pool_writable(Path(path)) for path in pool_paths}
    return {
        "libvirt": libvirt_host,
        "libvirt_error": libvirt_error,
        "pools": pools,
        "ok": not libvirt_error and all(result == "ok" for result in pools.values()),
    }


def hypervisor_check(*, hypervisor: Hypervisor, timeout: float = 30.0) -> dict[str, Any]:
    """Ask the worker of the host's queue what it sees (`host_check_local`) and wait.

    Raises InfrastructureError when no worker takes the task in `timeout` seconds: the
    message says which queue and how to start a worker on it. The task expires with the
    wait, so a worker started later does not run a stale check.
    """
    pools = list(hypervisor.storage_pools.all()) or list(StoragePool.objects.all())
    queue = hypervisor_queue(hypervisor)
    call = task_calls.check_host(
        uri=hypervisor.uri, pool_paths=[pool.path for pool in pools], queue=queue, expires=timeout
    )
    # Not `isard.core.tasks.send_task`: this one waits for the worker's answer.
    result = current_app.send_task(call.name, kwargs=dict(call.kwargs), **dict(call.options))
    try:
        answer: dict[str, Any] = result.get(timeout=timeout)
    except CeleryTimeoutError as error:
        raise InfrastructureError(
            f"No worker answered on queue {queue} within {timeout:.0f} s: start one that "
            f"consumes it (celery -A isard worker -Q {queue}).",
            extra={"queue": queue},
        ) from error
    finally:
        result.forget()
    return answer


def check_fleet_admin(actor: User) -> None:
    if not actor.is_admin:
        raise PermissionDeniedError("Only administrators manage hypervisors.")


def hypervisor_enable(*, actor: User, hypervisor: Hypervisor) -> Hypervisor:
    """Open the host to new desktops again; a drain in progress stops where it is."""
    check_fleet_admin(actor)
    now = timezone.now()
    with transaction.atomic():
        Hypervisor.objects.filter(pk=hypervisor.pk).update(mode=HypervisorMode.ENABLED)
        stopped_drain = Hypervisor.objects.filter(
            pk=hypervisor.pk, drain_started_at__isnull=False, drain_finished_at__isnull=True
        ).update(drain_finished_at=now)
        message = "enabled" + (" (drain cancelled)" if stopped_drain else "")
        HypervisorEvent.objects.create(hypervisor=hypervisor, message=message, actor=actor)
    hypervisor.refresh_from_db()
    return hypervisor
