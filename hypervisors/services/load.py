"""The hosts' load over time: a sample kept every few minutes, for the usage charts."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings

from hypervisors.models import HostLoadSample, Hypervisor


def host_load_keep(*, hypervisor: Hypervisor, now: datetime) -> bool:
    """Keep the host's current figures unless one was kept in the last interval.

    The monitor samples every few seconds; a chart over weeks needs far fewer. Only the
    monitor writes these (one beat task), so an exists-then-insert is enough."""
    interval = timedelta(seconds=settings.ISARD_HOST_LOAD_SAMPLE_SECONDS)
    if HostLoadSample.objects.filter(hypervisor=hypervisor, at__gt=now - interval).exists():
        return False
    HostLoadSample.objects.create(
        hypervisor=hypervisor,
        at=now,
        cpu_load=hypervisor.cpu_load,
        memory_mib=hypervisor.memory_mib,
        free_memory_mib=hypervisor.free_memory_mib,
        running_domains=hypervisor.running_domains,
    )
    return True


def host_load_prune(*, now: datetime) -> int:
    """Drop the samples older than `ISARD_HOST_LOAD_KEEP_DAYS`."""
    limit = now - timedelta(days=settings.ISARD_HOST_LOAD_KEEP_DAYS)
    deleted, _kinds = HostLoadSample.objects.filter(at__lt=limit).delete()
    return deleted
