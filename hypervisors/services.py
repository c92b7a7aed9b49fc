"""Writes for hypervisors, storage pools and disks.

Driver and qemu-img calls happen outside database transactions: the row is committed
first, the slow I/O runs, then the result is committed (a libvirt call can take seconds
and must never hold a lock on the rows other workers need).
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery.exceptions import TimeoutError as CeleryTimeoutError
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from desktops.choices import DesktopStatus
from desktops.models import Desktop, DesktopEvent
from hypervisors import qemu_img
from hypervisors.choices import (
    Accelerator,
    AcceleratorSetting,
    DiskFormat,
    DiskStatus,
    DrainPolicy,
    HypervisorMode,
    HypervisorState,
    MoveKind,
    MoveReason,
    MoveStatus,
    PoolPurpose,
)
from hypervisors.drivers import libvirt_driver
from hypervisors.drivers.domain_xml import DiskSpec, DomainSpec, build_domain_xml
from hypervisors.fleet import LockUnavailableError, fleet_lock, fleet_settings
from hypervisors.models import (
    DesktopMove,
    Disk,
    Hypervisor,
    HypervisorEvent,
    PlacementCharge,
    StoragePool,
)
from hypervisors.placement import (
    DesktopRequest,
    FleetState,
    Placement,
    Policy,
    place,
    plan_rebalance,
    project_moves,
    spread,
)
from hypervisors.placement import MoveKind as PlannedMoveKind
from hypervisors.routing import default_queue, hypervisor_queue
from hypervisors.selectors import (
    BOOKED_STATUSES,
    FleetSnapshot,
    RuleBook,
    booked_desktops_on,
    fleet_snapshot,
    pending_next_start_targets,
    running_desktops,
)
from isard.core.errors import (
    ApplicationError,
    ConflictError,
    InfrastructureError,
    NoCapacityError,
    PermissionDeniedError,
)

if TYPE_CHECKING:
    from accounts.models import Course, User

logger = logging.getLogger(__name__)

#: How long the accelerator probe waits for the demo guest to boot under KVM.
KVM_PROBE_TIMEOUT_SECONDS = 20.0
TCG_PROBE_TIMEOUT_SECONDS = 60.0


def storage_pools_ensure(*, root: Path | None = None) -> dict[str, StoragePool]:
    """Create (once) one pool per purpose under the storage root, directories included."""
    root = Path(root or settings.ISARD_STORAGE_ROOT)
    pools: dict[str, StoragePool] = {}
    for purpose in PoolPurpose:
        directory = root / purpose.value
        directory.mkdir(parents=True, exist_ok=True)
        # qemu runs as its own user under qemu:///system and must reach the files.
        directory.chmod(0o755)
        pool, _ = StoragePool.objects.get_or_create(
            path=str(directory), defaults={"name": f"{purpose.value}", "purpose": purpose}
        )
        pools[purpose.value] = pool
    return pools


def pool_for(purpose: PoolPurpose) -> StoragePool:
    pool = StoragePool.objects.filter(purpose=purpose).order_by("pk").first()
    if pool is None:
        pool = storage_pools_ensure()[purpose.value]
    return pool


def hypervisor_register(*, name: str, uri: str) -> Hypervisor:
    """Register a host (idempotent by name) and let it reach every storage pool."""
    hypervisor, created = Hypervisor.objects.get_or_create(name=name, defaults={"uri": uri})
    if not created and hypervisor.uri != uri:
        hypervisor.uri = uri
        hypervisor.save(update_fields=["uri"])
    if created:
        hypervisor.storage_pools.set(StoragePool.objects.all())
    return hypervisor


def hypervisor_refresh(*, hypervisor: Hypervisor, now: datetime | None = None) -> Hypervisor:
    """Sample the host once and record what it said, or that it did not answer.

    A host that stops answering stays online for `ISARD_HYPERVISOR_OFFLINE_GRACE_SECONDS`
    (though nothing new is placed there) before it is marked offline and its running
    desktops unknown; see `hypervisor_record_silence`.
    """
    try:
        sample = libvirt_driver.host_sample(hypervisor.uri)
    except libvirt_driver.DriverError as error:
        return hypervisor_record_silence(hypervisor=hypervisor, error=str(error), now=now)
    return hypervisor_record_sample(hypervisor=hypervisor, sample=sample, now=now)


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
    from isard.celery import app

    pools = list(hypervisor.storage_pools.all()) or list(StoragePool.objects.all())
    queue = hypervisor_queue(hypervisor)
    result = app.send_task(
        "hypervisors.tasks.check_host",
        args=[hypervisor.uri, [pool.path for pool in pools]],
        queue=queue,
        expires=timeout,
    )
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


def _probe_domain_xml(*, domain_type: str, disk: Path, serial_log: Path) -> str:
    return build_domain_xml(
        DomainSpec(
            name=f"isard-probe-{domain_type}-{uuid.uuid4().hex[:8]}",
            uuid=str(uuid.uuid4()),
            domain_type=domain_type,
            vcpus=1,
            memory_mib=256,
            disks=(DiskSpec(path=str(disk)),),
            spice=False,
            vnc=False,
            serial_log_path=str(serial_log),
        )
    )


def hypervisor_detect_accelerator(
    *, hypervisor: Hypervisor, probe_image: Path, force: bool = False
) -> Hypervisor:
    """Find out whether real guests boot under KVM on this host; fall back to TCG.

    The admin's `accelerator_setting` wins when it is not "auto". Otherwise the demo guest
    is booted under KVM from a throw-away overlay: capabilities advertise KVM on machines
    where nested KVM crashes every guest, so only a real boot can tell.
    """
    if hypervisor.accelerator_setting != AcceleratorSetting.AUTO:
        Hypervisor.objects.filter(pk=hypervisor.pk).update(
            accelerator=hypervisor.accelerator_setting,
            accelerator_detail="set by the administrator",
            accelerator_probed_at=timezone.now(),
        )
        hypervisor.refresh_from_db()
        return hypervisor
    if hypervisor.accelerator and not force:
        return hypervisor

    from hypervisors.guest_image import GUEST_READY_MARKER

    results: list[str] = []
    chosen = ""
    work = Path(tempfile.mkdtemp(prefix="probe-", dir=pool_for(PoolPurpose.DESKTOPS).path))
    try:
        work.chmod(0o755)
        for domain_type, timeout in (
            (Accelerator.KVM, KVM_PROBE_TIMEOUT_SECONDS),
            (Accelerator.QEMU, TCG_PROBE_TIMEOUT_SECONDS),
        ):
            overlay = work / f"{domain_type}.qcow2"
            qemu_img.create_overlay(overlay, probe_image)
            serial_log = work / f"{domain_type}.log"
            xml = _probe_domain_xml(domain_type=domain_type, disk=overlay, serial_log=serial_log)
            booted, detail = libvirt_driver.boot_probe(
                hypervisor.uri, xml, str(serial_log), GUEST_READY_MARKER, timeout
            )
            results.append(f"{domain_type}: {detail}")
            if booted:
                chosen = domain_type
                break
    except (qemu_img.QemuImgError, libvirt_driver.DriverError) as error:
        results.append(f"probe failed: {error}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Hypervisor.objects.filter(pk=hypervisor.pk).update(
        accelerator=chosen,
        accelerator_detail="; ".join(results),
        accelerator_probed_at=timezone.now(),
    )
    hypervisor.refresh_from_db()
    logger.info("accelerator of %s: %s (%s)", hypervisor.name, chosen or "none", "; ".join(results))
    return hypervisor


def disk_path(pool: StoragePool) -> Path:
    return Path(pool.path) / f"{uuid.uuid4()}.qcow2"


def disk_record(
    *, pool: StoragePool, path: Path, parent: Disk | None = None, read_only: bool = False
) -> Disk:
    """Record a disk file that exists, with its real sizes as qemu-img reports them."""
    image = qemu_img.info(path)
    return Disk.objects.create(
        pool=pool,
        path=str(path),
        format=image.format if image.format in DiskFormat.values else DiskFormat.QCOW2,
        parent=parent,
        read_only=read_only,
        virtual_size_bytes=image.virtual_size_bytes,
        actual_size_bytes=image.actual_size_bytes,
        status=DiskStatus.READY,
    )


def disk_refresh_size(*, disk: Disk) -> Disk:
    try:
        image = qemu_img.info(Path(disk.path))
    except qemu_img.QemuImgError:
        return disk
    Disk.objects.filter(pk=disk.pk).update(
        virtual_size_bytes=image.virtual_size_bytes, actual_size_bytes=image.actual_size_bytes
    )
    disk.refresh_from_db()
    return disk


def disk_refresh_actual_size(*, disk_id: int) -> None:
    """Record what a disk really takes now, from the file system (no subprocess).

    Called when a desktop stops, so the pool's use follows what guests wrote. A disk
    whose file this process cannot see (a host with local storage elsewhere) keeps its
    last figure.
    """
    disk = Disk.objects.filter(pk=disk_id).only("path").first()
    if disk is None:
        return
    try:
        actual = Path(disk.path).stat().st_blocks * 512
    except OSError:
        return
    Disk.objects.filter(pk=disk_id).update(actual_size_bytes=actual)


def disk_create_overlay(*, parent: Disk, pool: StoragePool | None = None) -> Disk:
    """A new copy-on-write disk on top of `parent`. Leaves no file behind on failure."""
    pool = pool or pool_for(PoolPurpose.DESKTOPS)
    path = disk_path(pool)
    try:
        qemu_img.create_overlay(path, Path(parent.path), backing_format=parent.format)
        # No `qemu-img info` here: an overlay has its parent's virtual size, and its real
        # size is what the file system says. A second subprocess per desktop would
        # double the cost of creating a class.
        return Disk.objects.create(
            pool=pool,
            path=str(path),
            format=DiskFormat.QCOW2,
            parent=parent,
            virtual_size_bytes=parent.virtual_size_bytes,
            actual_size_bytes=path.stat().st_blocks * 512,
        )
    except Exception as error:
        path.unlink(missing_ok=True)
        if isinstance(error, qemu_img.QemuImgError):
            raise InfrastructureError(f"could not create the disk: {error}") from error
        raise


def disk_create_empty(*, size_bytes: int, pool: StoragePool | None = None) -> Disk:
    pool = pool or pool_for(PoolPurpose.DESKTOPS)
    path = disk_path(pool)
    try:
        qemu_img.create_empty(path, size_bytes)
        return disk_record(pool=pool, path=path)
    except Exception as error:
        path.unlink(missing_ok=True)
        if isinstance(error, qemu_img.QemuImgError):
            raise InfrastructureError(f"could not create the disk: {error}") from error
        raise


def disk_import(*, source: Path, pool: StoragePool, move: bool = False) -> Disk:
    """Bring an existing image into a pool as a read-only base disk."""
    destination = disk_path(pool)
    if move:
        shutil.move(str(source), destination)
    else:
        shutil.copyfile(source, destination)
    os.chmod(destination, 0o444)
    return disk_record(pool=pool, path=destination, read_only=True)


# --- the fleet --------------------------------------------------------------------------------


def schedule_after_commit(task_name: str, *args: Any, **options: Any) -> None:
    """Send a Celery task once the current transaction has committed (as desktops do)."""
    # desktops.services imports this module; its `send_task` is what the test runner sees.
    from desktops.services import send_task

    transaction.on_commit(partial(send_task, task_name, list(args), options))


def hypervisor_hand_off(task_name: str, desktop_id: int, *, hypervisor: Hypervisor) -> bool:
    """Leave the rest of a desktop's start or provisioning to the chosen host's own worker.

    Placement runs on whichever worker took the task (the default queue); the libvirt
    work must run where the host's worker is. If the host has a queue of its own, the
    same task is sent again with the host's id, which routes it there
    (`hypervisors.routing`), and True is returned: the caller stops. A host served by
    the central worker: False, the caller carries on.
    """
    if hypervisor_queue(hypervisor) == default_queue():
        return False
    schedule_after_commit(task_name, desktop_id, hypervisor.pk)
    return True


def hypervisors_hand_off_many(
    task_name: str, placements: Mapping[int, Hypervisor | ApplicationError]
) -> set[int]:
    """`hypervisor_hand_off` for a class: one task per queue with its (desktop, host) pairs.

    Returns the desktops handed off; the caller goes on with the others.
    """
    groups: dict[str, list[list[int]]] = {}
    for desktop_id, placed in placements.items():
        if isinstance(placed, Hypervisor) and hypervisor_queue(placed) != default_queue():
            groups.setdefault(hypervisor_queue(placed), []).append([desktop_id, placed.pk])
    for pairs in groups.values():
        schedule_after_commit(task_name, [pair[0] for pair in pairs], pairs)
    return {pair[0] for pairs in groups.values() for pair in pairs}


# --- the fleet: monitoring ------------------------------------------------------------------


def _booked_memory_mib(hypervisor: Hypervisor) -> int:
    sizes = Desktop.objects.filter(hypervisor=hypervisor, status__in=BOOKED_STATUSES).values_list(
        "hardware__memory_mib", flat=True
    )
    return sum(sizes)


def hypervisor_record_sample(
    *, hypervisor: Hypervisor, sample: libvirt_driver.HostSample, now: datetime | None = None
) -> Hypervisor:
    """Record a stats sample: the host is online, and starts charged to it are now visible."""
    now = now or timezone.now()
    cpu_load = hypervisor.cpu_load
    if sample.cpu_busy_ns is not None and sample.cpu_total_ns is not None:
        busy = sample.cpu_busy_ns - hypervisor.cpu_busy_ns
        total = sample.cpu_total_ns - hypervisor.cpu_total_ns
        if hypervisor.cpu_total_ns and total > 0 and busy >= 0:
            cpu_load = min(busy / total, 1.0)
    free_memory_mib = sample.free_memory_mib
    if free_memory_mib is None:
        # The driver cannot tell (libvirt's test driver): assume the booked desktops use
        # what they were given and the rest is free.
        free_memory_mib = max(sample.memory_mib - _booked_memory_mib(hypervisor), 0)
    came_back = hypervisor.state == HypervisorState.OFFLINE
    Hypervisor.objects.filter(pk=hypervisor.pk).update(
        state=HypervisorState.ONLINE,
        last_error="",
        last_seen_at=now,
        unreachable_since=None,
        cpus=sample.cpus,
        memory_mib=sample.memory_mib,
        free_memory_mib=free_memory_mib,
        running_domains=sample.running_domains,
        cpu_load=cpu_load,
        cpu_busy_ns=sample.cpu_busy_ns or 0,
        cpu_total_ns=sample.cpu_total_ns or 0,
    )
    if came_back:
        HypervisorEvent.objects.create(
            hypervisor=hypervisor, message="answers again; its desktops are being reconciled"
        )
        logger.info("hypervisor %s answers again", hypervisor.name)
    hypervisor.refresh_from_db()
    return hypervisor


def hypervisor_record_silence(
    *, hypervisor: Hypervisor, error: str, now: datetime | None = None
) -> Hypervisor:
    """Record that the host did not answer; past the grace, mark it and its desktops.

    From the first failed contact nothing new is placed there (the snapshot treats it as
    offline). Once it has been silent for `ISARD_HYPERVISOR_OFFLINE_GRACE_SECONDS` (at
    once if it was never seen), it becomes offline and its running desktops unknown: the
    guests may well still run, we just cannot tell. When it answers again, the
    reconciliation sets each desktop from what the host really runs.
    """
    now = now or timezone.now()
    libvirt_driver.forget_connection(hypervisor.uri)
    Hypervisor.objects.filter(pk=hypervisor.pk, unreachable_since__isnull=True).update(
        unreachable_since=now
    )
    Hypervisor.objects.filter(pk=hypervisor.pk).update(last_error=error)
    hypervisor.refresh_from_db()
    assert hypervisor.unreachable_since is not None
    silent_seconds = (now - hypervisor.unreachable_since).total_seconds()
    grace = fleet_settings().offline_grace_seconds
    never_seen = hypervisor.state == HypervisorState.UNKNOWN
    if hypervisor.state != HypervisorState.OFFLINE and (never_seen or silent_seconds >= grace):
        # Conditional: of two monitors noticing at once, one marks the desktops.
        went_offline = Hypervisor.objects.filter(pk=hypervisor.pk, state=hypervisor.state).update(
            state=HypervisorState.OFFLINE
        )
        if went_offline:
            _desktops_mark_unknown(hypervisor, error=error, silent_seconds=silent_seconds)
        hypervisor.refresh_from_db()
    return hypervisor


def _desktops_mark_unknown(hypervisor: Hypervisor, *, error: str, silent_seconds: float) -> None:
    from desktops.services import desktops_transition

    reason = (
        f"its hypervisor {hypervisor.name} has not answered for {silent_seconds:.0f} s: {error}"
    )
    desktops = list(
        Desktop.objects.filter(
            hypervisor=hypervisor,
            status__in=[
                DesktopStatus.STARTED,
                DesktopStatus.SHUTTING_DOWN,
                DesktopStatus.STOPPING,
            ],
        )
    )
    changed, _conflicts = desktops_transition(
        changes=[(desktop, {}) for desktop in desktops], to=DesktopStatus.UNKNOWN, reason=reason
    )
    HypervisorEvent.objects.create(
        hypervisor=hypervisor,
        message=f"offline after {silent_seconds:.0f} s without an answer ({error}); "
        f"{len(changed)} desktops marked unknown",
    )
    logger.warning("hypervisor %s is offline: %s", hypervisor.name, error)


def hypervisors_monitor(*, now: datetime | None = None) -> dict[str, str]:
    """Sample every host at once and record each; returns each host's state.

    The libvirt calls run in threads, so one host that hangs (a remote host whose network
    went away) costs the others nothing: past `ISARD_HYPERVISOR_SAMPLE_TIMEOUT_SECONDS` it
    counts as silent. The database is written from this thread only.
    """
    hypervisors = list(Hypervisor.objects.order_by("pk"))
    if not hypervisors:
        return {}
    timeout = fleet_settings().sample_timeout_seconds
    executor = ThreadPoolExecutor(max_workers=min(len(hypervisors), 16))
    try:
        futures = {
            hypervisor.pk: executor.submit(libvirt_driver.host_sample, hypervisor.uri)
            for hypervisor in hypervisors
        }
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        for hypervisor in hypervisors:
            try:
                sample = futures[hypervisor.pk].result(
                    timeout=max(deadline - time.monotonic(), 0.0)
                )
            except FutureTimeoutError:
                hypervisor = hypervisor_record_silence(
                    hypervisor=hypervisor, error=f"no answer within {timeout:.0f} s", now=now
                )
            except libvirt_driver.DriverError as error:
                hypervisor = hypervisor_record_silence(
                    hypervisor=hypervisor, error=str(error), now=now
                )
            else:
                hypervisor = hypervisor_record_sample(hypervisor=hypervisor, sample=sample, now=now)
            states[hypervisor.name] = hypervisor.state
        return states
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


# --- the fleet: placement ---------------------------------------------------------------------

#: Charges are kept this long after they stop counting: the latest one is the round-robin
#: cursor, which must survive a quiet hour.
CHARGE_RETENTION = timedelta(days=1)
_POOL_ID = re.compile(r"\bpool (\d+)\b")


def _placement_lock() -> ExitStack:
    """The fleet-wide placement lock, or none if Redis cannot give it.

    Placing is a read-decide-charge; two workers doing it at once could both pick the
    host that had the most room. The lock costs a few milliseconds per start. Without
    Redis the start still goes ahead (it must never hang on the balancer); the worst case
    is two desktops on the same host.
    """
    stack = ExitStack()
    try:
        stack.enter_context(fleet_lock("placement", timeout=30, wait=10))
    except LockUnavailableError as error:
        logger.warning("placing without the fleet lock: %s", error)
    return stack


def _refusal(placement: Placement, snapshot: FleetSnapshot, *, forced: bool) -> str:
    """The balancer's reason as a user reads it: pools by name, a sentence."""
    reason = _POOL_ID.sub(
        lambda match: f"pool “{snapshot.pool_names.get(int(match[1]), match[1])}”",
        placement.reason,
    )
    if not forced and not any(host.takes_new_desktops for host in snapshot.hosts):
        headline = (
            "No hypervisor is online"
            if not any(host.online for host in snapshot.hosts)
            else "No hypervisor accepts new desktops now"
        )
        return f"{headline}: ask an administrator to check the hypervisors page ({reason})."
    return f"{reason[:1].upper()}{reason[1:]}."


def _pool_id(desktop: Desktop | None, storage_pool: StoragePool | None) -> int | None:
    if storage_pool is not None:
        return storage_pool.pk
    if desktop is not None and desktop.disk_id is not None:
        return Disk.objects.filter(pk=desktop.disk_id).values_list("pool_id", flat=True).first()
    return None


def hypervisor_place(
    *,
    memory_mib: int,
    vcpus: int,
    course: Course | None = None,
    desktop: Desktop | None = None,
    storage_pool: StoragePool | None = None,
    charge: bool = True,
) -> Hypervisor:
    """Choose the host a desktop starts on, and charge the start to it until its next sample.

    The policy is the desktop's or its course's placement rule, else
    `ISARD_PLACEMENT_POLICY`; a forced host, a favourite host and required tags come from
    the same rules, and a move the rebalancer planned for the desktop's next start counts
    as its favourite. Hard constraints: online, enabled, the desktop's storage pool
    (`storage_pool`, else its disk's), tags, memory and vCPUs with overcommit.

    Raises NoCapacityError with the balancer's reason ("No hypervisor with 4096 MiB and 2
    vCPUs free in pool “desktops”: ..."), at once: a start never waits for room. With
    `charge=False` (defining a domain that does not run yet) nothing is written.
    """
    desktop_id = desktop.pk if desktop is not None else None
    course_id = course.pk if course is not None else None
    if course_id is None and desktop is not None:
        course_id = desktop.course_id
    rules = RuleBook(
        desktop_ids=[desktop_id] if desktop_id else [],
        course_ids=[course_id] if course_id else [],
    )
    rule = rules.effective(desktop_id=desktop_id, course_id=course_id)
    favourite = rule.favourite_hypervisor_id
    planned_target: int | None = None
    if desktop_id is not None and rule.forced_hypervisor_id is None and favourite is None:
        planned_target = pending_next_start_targets(desktop_ids=[desktop_id]).get(desktop_id)
        favourite = planned_target
    request = DesktopRequest(
        memory_mib=memory_mib,
        vcpus=vcpus,
        required_tags=rule.required_tags,
        storage_pool=_pool_id(desktop, storage_pool),
        forced_host=rule.forced_hypervisor_id,
        favourite_host=favourite,
    )
    # Lock, then transaction: the charge is committed before the next worker decides. A
    # decision that charges nothing (defining a domain that does not run yet) writes
    # nothing another worker could race with, so it needs neither.
    guard = ExitStack()
    if charge:
        guard.enter_context(_placement_lock())
        guard.enter_context(transaction.atomic())
    with guard:
        now = timezone.now()
        snapshot = fleet_snapshot(now=now, exclude_desktop_ids=[desktop_id] if desktop_id else [])
        placement = place(
            request,
            snapshot.hosts,
            Policy(rule.policy),
            round_robin_cursor=snapshot.round_robin_cursor,
        )
        if placement.host_id is None:
            raise NoCapacityError(
                _refusal(placement, snapshot, forced=rule.forced_hypervisor_id is not None),
                extra={"memory_mib": memory_mib, "vcpus": vcpus},
            )
        if charge:
            PlacementCharge.objects.create(
                hypervisor_id=placement.host_id,
                desktop_id=desktop_id,
                memory_mib=memory_mib,
                vcpus=vcpus,
                created_at=now,
            )
            PlacementCharge.objects.filter(created_at__lt=now - CHARGE_RETENTION).delete()
        if charge and planned_target is not None and desktop_id is not None:
            _next_start_moves_settle(desktop_id, placement.host_id, now=now)
    logger.debug("desktop %s: %s", desktop_id, placement.reason)
    return snapshot.hypervisors[placement.host_id]


def hypervisors_place_many(
    *,
    desktops: Sequence[Desktop],
    storage_pool: StoragePool | None = None,
    charge: bool = False,
) -> dict[int, Hypervisor | NoCapacityError]:
    """Place a whole class in one decision pass: each desktop sees the ones before it.

    For each desktop (its `hardware` loaded), the host or the NoCapacityError saying why
    none fits. One snapshot, one lock; each placement charges the working copy of the
    fleet, so 30 desktops spread (or pack) as if started one after another. With `charge`
    (the desktops are starting) the charges are also stored and planned moves settled, as
    `hypervisor_place` does for one start; without, nothing is written.
    """
    desktop_ids = [desktop.pk for desktop in desktops]
    rules = RuleBook(
        desktop_ids=desktop_ids,
        course_ids={desktop.course_id for desktop in desktops if desktop.course_id},
    )
    planned = pending_next_start_targets(desktop_ids=desktop_ids)
    pool_ids = dict(
        Disk.objects.filter(desktops__in=desktop_ids).values_list("desktops__pk", "pool_id")
    )
    results: dict[int, Hypervisor | NoCapacityError] = {}
    with _placement_lock(), transaction.atomic():
        now = timezone.now()
        snapshot = fleet_snapshot(now=now, exclude_desktop_ids=desktop_ids)
        fleet = FleetState(snapshot.hosts, round_robin_cursor=snapshot.round_robin_cursor)
        charges: list[PlacementCharge] = []
        for desktop in desktops:
            rule = rules.effective(desktop_id=desktop.pk, course_id=desktop.course_id)
            favourite = rule.favourite_hypervisor_id
            if rule.forced_hypervisor_id is None and favourite is None:
                favourite = planned.get(desktop.pk)
            request = DesktopRequest(
                memory_mib=desktop.hardware.memory_mib,
                vcpus=desktop.hardware.vcpus,
                required_tags=rule.required_tags,
                storage_pool=pool_ids.get(desktop.pk, storage_pool.pk if storage_pool else None),
                forced_host=rule.forced_hypervisor_id,
                favourite_host=favourite,
            )
            placement = fleet.place(request, Policy(rule.policy))
            if placement.host_id is None:
                results[desktop.pk] = NoCapacityError(
                    _refusal(placement, snapshot, forced=rule.forced_hypervisor_id is not None)
                )
                continue
            results[desktop.pk] = snapshot.hypervisors[placement.host_id]
            charges.append(
                PlacementCharge(
                    hypervisor_id=placement.host_id,
                    desktop_id=desktop.pk,
                    memory_mib=request.memory_mib,
                    vcpus=request.vcpus,
                    created_at=now,
                )
            )
            if charge and desktop.pk in planned:
                _next_start_moves_settle(desktop.pk, placement.host_id, now=now)
        if charge:
            PlacementCharge.objects.bulk_create(charges)
    return results


def _next_start_moves_settle(desktop_id: int, host_id: int, *, now: datetime) -> None:
    """The desktop was placed: its planned move at next start is done, or overtaken."""
    pending = DesktopMove.objects.filter(
        desktop_id=desktop_id, kind=MoveKind.AT_NEXT_START, status=MoveStatus.PENDING
    )
    pending.filter(target_id=host_id).update(status=MoveStatus.DONE, finished_at=now)
    pending.exclude(target_id=host_id).update(
        status=MoveStatus.CANCELLED,
        finished_at=now,
        detail="its target could not take it at its start; placed by policy",
    )


# --- the fleet: moving desktops ------------------------------------------------------------------


def _check_admin(actor: User) -> None:
    if not actor.is_admin:
        raise PermissionDeniedError("Only administrators manage hypervisors.")


def desktop_live_migrate(
    *,
    desktop: Desktop,
    target: Hypervisor,
    reason: MoveReason,
    actor: User | None = None,
) -> DesktopMove:
    """Move a started desktop's running guest to `target` without stopping it.

    The move row is committed first, then libvirt migrates (seconds; no transaction is
    open), then the desktop's host changes with a conditional update and an event row.
    On failure the guest goes on running where it was and the move says why.

    While the guest leaves, its old host reports it gone; the lifecycle listener or the
    reconciler may act on that before the desktop's host is updated, and mark it stopped
    or failed. So once the host is updated, the guest's real state on the target is
    applied again.
    """
    from desktops.services import desktop_sync_state

    desktop.refresh_from_db()
    source = desktop.hypervisor
    if desktop.status != DesktopStatus.STARTED or source is None:
        raise ConflictError(f"The desktop “{desktop.name}” is not running; it cannot migrate.")
    if source.pk == target.pk:
        raise ConflictError(f"The desktop “{desktop.name}” already runs on {target.name}.")
    pool = desktop.disk.pool if desktop.disk is not None else None
    move = DesktopMove.objects.create(
        desktop=desktop,
        source=source,
        target=target,
        kind=MoveKind.LIVE_MIGRATION,
        reason=reason,
        status=MoveStatus.RUNNING,
    )
    started = time.monotonic()
    try:
        libvirt_driver.migrate_domain(
            source.uri,
            target.uri,
            desktop.domain_name,
            live=True,
            target_address=target.migration_address,
            trust_shared_storage=bool(pool is not None and pool.shared),
            timeout=fleet_settings().migration_timeout_seconds,
        )
    except libvirt_driver.DriverError as error:
        DesktopMove.objects.filter(pk=move.pk).update(
            status=MoveStatus.FAILED, detail=str(error), finished_at=timezone.now()
        )
        move.refresh_from_db()
        logger.warning("live migration of %s failed: %s", desktop.domain_name, error)
        return move
    seconds = time.monotonic() - started
    with transaction.atomic():
        Desktop.objects.filter(pk=desktop.pk, hypervisor=source).update(hypervisor=target)
        DesktopEvent.objects.create(
            desktop=desktop,
            from_status=desktop.status,
            to_status=desktop.status,
            reason=f"live-migrated from {source.name} to {target.name} "
            f"({MoveReason(reason).label.lower()}, {seconds:.1f} s)",
            actor=actor,
        )
        DesktopMove.objects.filter(pk=move.pk).update(
            status=MoveStatus.DONE, detail=f"{seconds:.1f} s", finished_at=timezone.now()
        )
    desktop.refresh_from_db()
    if desktop.status != DesktopStatus.STARTED:
        try:
            state = libvirt_driver.domain_state(target.uri, desktop.domain_name)
        except libvirt_driver.DriverError:
            state = libvirt_driver.DomainState.OTHER
        desktop_sync_state(desktop=desktop, state=state, source=f"live migration to {target}")
    # Sample both hosts now: the next decision (the rest of a plan, the next start) must see
    # the memory where it went, not where the last sample left it.
    hypervisor_refresh(hypervisor=source)
    hypervisor_refresh(hypervisor=target)
    move.refresh_from_db()
    return move


def _move_at_next_start(
    desktop_id: int, source_id: int, target_id: int, reason: MoveReason
) -> DesktopMove:
    """Leave the guest running; its next start goes to `target` (if it still fits)."""
    with transaction.atomic():
        DesktopMove.objects.filter(
            desktop_id=desktop_id, kind=MoveKind.AT_NEXT_START, status=MoveStatus.PENDING
        ).update(status=MoveStatus.CANCELLED, finished_at=timezone.now(), detail="a newer plan")
        return DesktopMove.objects.create(
            desktop_id=desktop_id,
            source_id=source_id,
            target_id=target_id,
            kind=MoveKind.AT_NEXT_START,
            reason=reason,
        )


def _shut_down_for_drain(
    desktop_id: int, hypervisor: Hypervisor, actor: User | None
) -> DesktopMove | None:
    from desktops.services import desktop_shutdown

    desktop = Desktop.objects.select_related("owner").get(pk=desktop_id)
    if desktop.status != DesktopStatus.STARTED or desktop.hypervisor_id != hypervisor.pk:
        return None
    move = DesktopMove(
        desktop=desktop, source=hypervisor, kind=MoveKind.STOP, reason=MoveReason.DRAIN
    )
    try:
        # The owner may always shut their own desktop down; the drain acts for the admin.
        desktop_shutdown(actor=actor or desktop.owner, desktop=desktop)
    except ApplicationError as error:
        move.status, move.detail = MoveStatus.FAILED, error.message
    else:
        move.status, move.detail = MoveStatus.DONE, "shut down (forced off after the timeout)"
    move.finished_at = timezone.now()
    move.save()
    return move


# --- the fleet: drain -------------------------------------------------------------------------


def hypervisor_drain(
    *, actor: User, hypervisor: Hypervisor, policy: DrainPolicy | None = None
) -> Hypervisor:
    """Put a host in maintenance and empty it: live-migrate or shut down its desktops.

    Nothing new starts there from now on. A task does the moves (`hypervisor_drain_step`)
    and follows them until no desktop is left; `selectors.drain_progress` says how far it
    got. Draining a host already draining only changes the policy and runs a step again.
    """
    _check_admin(actor)
    policy = DrainPolicy(policy or fleet_settings().drain_policy)
    now = timezone.now()
    with transaction.atomic():
        draining = (
            hypervisor.mode == HypervisorMode.MAINTENANCE
            and hypervisor.drain_started_at is not None
            and hypervisor.drain_finished_at is None
        )
        total = booked_desktops_on(hypervisor)
        if draining:
            Hypervisor.objects.filter(pk=hypervisor.pk).update(drain_policy=policy)
            message = f"drain policy changed to “{policy.label}”"
        else:
            updated = Hypervisor.objects.filter(pk=hypervisor.pk, mode=hypervisor.mode).update(
                mode=HypervisorMode.MAINTENANCE,
                drain_policy=policy,
                drain_started_at=now,
                drain_finished_at=None,
                drain_total=total,
            )
            if not updated:
                raise ConflictError(f"The hypervisor {hypervisor.name} changed meanwhile.")
            message = f"maintenance: drain started ({policy.label}), {total} desktops on it"
        HypervisorEvent.objects.create(hypervisor=hypervisor, message=message, actor=actor)
        schedule_after_commit("hypervisors.tasks.drain_hypervisor", hypervisor.pk, actor.pk)
    hypervisor.refresh_from_db()
    return hypervisor


def hypervisor_enable(*, actor: User, hypervisor: Hypervisor) -> Hypervisor:
    """Open the host to new desktops again; a drain in progress stops where it is."""
    _check_admin(actor)
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


@dataclass
class MovesResult:
    """What one drain step or rebalancing run did."""

    skipped: str = ""
    planned: int = 0
    migrated: int = 0
    at_next_start: int = 0
    stopped: int = 0
    failed: int = 0
    spread_before: float = 0.0
    spread_after: float = 0.0
    details: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "skipped": self.skipped,
            "planned": self.planned,
            "migrated": self.migrated,
            "at_next_start": self.at_next_start,
            "stopped": self.stopped,
            "failed": self.failed,
            "spread_before": round(self.spread_before, 4),
            "spread_after": round(self.spread_after, 4),
        }


def _moves_lock_timeout(moves: int) -> float:
    """Long enough for `moves` migrations that each run into their timeout."""
    return 60 + moves * (fleet_settings().migration_timeout_seconds + 30)


NO_DRAIN = "no drain in progress"


def hypervisor_drain_step(*, hypervisor_id: int, actor_id: int | None = None) -> MovesResult:
    """Move what can leave the draining host now, then check whether it is empty.

    Holds the moves lock (the rebalancer's), so a drain and a rebalancing never move
    desktops at the same time. Returns `skipped` when there is nothing to do or the lock
    is busy; the task then tries again later.
    """
    from accounts.models import User

    hypervisor = Hypervisor.objects.get(pk=hypervisor_id)
    if (
        hypervisor.mode != HypervisorMode.MAINTENANCE
        or hypervisor.drain_started_at is None
        or hypervisor.drain_finished_at is not None
    ):
        return MovesResult(skipped=NO_DRAIN)
    actor = User.objects.filter(pk=actor_id).first() if actor_id else None
    on_host = booked_desktops_on(hypervisor)
    try:
        with fleet_lock("moves", timeout=_moves_lock_timeout(on_host), wait=0):
            result = _drain_apply(hypervisor, actor)
    except LockUnavailableError as error:
        return MovesResult(skipped=str(error))
    hypervisor_drain_check(hypervisor=hypervisor)
    return result


def _drain_apply(hypervisor: Hypervisor, actor: User | None) -> MovesResult:
    policy = DrainPolicy(hypervisor.drain_policy or fleet_settings().drain_policy)
    result = MovesResult()
    leaving = [desktop.id for desktop in running_desktops(hypervisor_ids=[hypervisor.pk])]
    to_stop: list[int] = []
    if policy == DrainPolicy.STOP:
        to_stop = leaving
    else:
        snapshot = fleet_snapshot()
        everyone = running_desktops()
        # An infinite threshold: only the drain half of the plan, no balancing moves.
        plan = plan_rebalance(
            snapshot.hosts, everyone, max_moves=max(len(everyone), 1), threshold=math.inf
        )
        moves = [move for move in plan if move.source_host_id == hypervisor.pk]
        result.planned = len(moves)
        planned = {move.desktop_id for move in moves}
        for move in moves:
            desktop = Desktop.objects.select_related("hypervisor", "disk__pool").get(
                pk=move.desktop_id
            )
            if move.kind == PlannedMoveKind.LIVE_MIGRATION:
                try:
                    done = desktop_live_migrate(
                        desktop=desktop,
                        target=snapshot.hypervisors[move.target_host_id],
                        reason=MoveReason.DRAIN,
                        actor=actor,
                    )
                except ApplicationError as error:
                    result.details.append(f"{desktop.name}: {error.message}")
                    result.failed += 1
                    continue
                if done.status == MoveStatus.DONE:
                    result.migrated += 1
                    continue
                result.failed += 1
                result.details.append(f"{desktop.name}: {done.detail}")
            if policy == DrainPolicy.MIGRATE_OR_STOP:
                to_stop.append(move.desktop_id)
        if policy == DrainPolicy.MIGRATE_OR_STOP:
            # What no host can take now.
            to_stop += [desktop_id for desktop_id in leaving if desktop_id not in planned]
    for desktop_id in to_stop:
        stop = _shut_down_for_drain(desktop_id, hypervisor, actor)
        if stop is not None and stop.status == MoveStatus.DONE:
            result.stopped += 1
        elif stop is not None:
            result.failed += 1
    if result.migrated or result.stopped or result.failed:
        HypervisorEvent.objects.create(
            hypervisor=hypervisor,
            message=f"drain: {result.migrated} migrated, {result.stopped} shutting down, "
            f"{result.failed} failed"
            + (f" ({'; '.join(result.details[:5])})" if result.details else ""),
            actor=actor,
        )
    return result


def hypervisor_drain_check(*, hypervisor: Hypervisor) -> bool:
    """Finish the host's drain if no desktop is left on it; True if it is finished."""
    hypervisor.refresh_from_db()
    if hypervisor.drain_started_at is None or hypervisor.drain_finished_at is not None:
        return hypervisor.drain_finished_at is not None
    if hypervisor.mode != HypervisorMode.MAINTENANCE or booked_desktops_on(hypervisor):
        return False
    finished = Hypervisor.objects.filter(pk=hypervisor.pk, drain_finished_at__isnull=True).update(
        drain_finished_at=timezone.now()
    )
    if finished:
        HypervisorEvent.objects.create(
            hypervisor=hypervisor, message="drain finished: no desktop runs here"
        )
    hypervisor.refresh_from_db()
    return True


# --- the fleet: rebalancing ----------------------------------------------------------------------


def hypervisors_rebalance(
    *, max_moves: int | None = None, threshold: float | None = None
) -> MovesResult:
    """Compute a rebalancing plan and carry it out; at most one run at a time, fleet-wide.

    Drain moves first, then balancing moves while the spread of memory use is at or
    above `threshold`, at most `max_moves` in all (`ISARD_REBALANCE_*`). A desktop on
    shared storage is live-migrated now; any other is left running and started on its
    target next time. If another run (or a drain) holds the lock, this one is skipped.
    """
    config = fleet_settings()
    max_moves = config.rebalance_max_moves if max_moves is None else max_moves
    threshold = config.rebalance_threshold if threshold is None else threshold
    try:
        with fleet_lock("moves", timeout=_moves_lock_timeout(max_moves), wait=0):
            result = _rebalance_apply(max_moves=max_moves, threshold=threshold)
    except LockUnavailableError as error:
        return MovesResult(skipped=str(error))
    for hypervisor in Hypervisor.objects.filter(
        mode=HypervisorMode.MAINTENANCE, drain_finished_at__isnull=True
    ):
        hypervisor_drain_check(hypervisor=hypervisor)
    return result


def _rebalance_apply(*, max_moves: int, threshold: float) -> MovesResult:
    snapshot = fleet_snapshot()
    desktops = running_desktops()
    plan = plan_rebalance(snapshot.hosts, desktops, max_moves=max_moves, threshold=threshold)
    result = MovesResult(
        planned=len(plan),
        spread_before=spread(snapshot.hosts),
        spread_after=spread(project_moves(snapshot.hosts, desktops, plan)),
    )
    for move in plan:
        reason = MoveReason(move.reason.value)
        if move.kind == PlannedMoveKind.AT_NEXT_START:
            _move_at_next_start(move.desktop_id, move.source_host_id, move.target_host_id, reason)
            result.at_next_start += 1
            continue
        desktop = Desktop.objects.select_related("hypervisor", "disk__pool").get(pk=move.desktop_id)
        try:
            done = desktop_live_migrate(
                desktop=desktop, target=snapshot.hypervisors[move.target_host_id], reason=reason
            )
        except ApplicationError as error:
            result.failed += 1
            result.details.append(f"{desktop.name}: {error.message}")
            continue
        if done.status == MoveStatus.DONE:
            result.migrated += 1
        else:
            result.failed += 1
            result.details.append(f"{desktop.name}: {done.detail}")
    if plan:
        logger.info("rebalance: %s", result.as_dict())
    return result
