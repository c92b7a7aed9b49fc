"""What each person's desktops count towards their quotas (see `accounts.quotas`)."""

from __future__ import annotations

from collections.abc import Iterator

from django.db.models import Count, Q, Sum

from desktops.choices import ACTIVE_STATUSES, DesktopStatus
from desktops.models import Desktop


def desktop_usage(owner_ids: list[int]) -> Iterator[tuple[int, dict[str, int]]]:
    """Desktops outside the recycle bin; those running (or on a host that stopped
    answering) with their vCPUs and memory; the disk really used, recycle bin included
    (the disk stays until purged)."""
    running = Q(status__in=[*ACTIVE_STATUSES, DesktopStatus.UNKNOWN])
    rows = (
        Desktop.objects.filter(owner_id__in=owner_ids)
        .values("owner_id")
        .annotate(
            desktops=Count("pk", filter=~Q(status=DesktopStatus.DELETED)),
            running=Count("pk", filter=running),
            vcpus=Sum("hardware__vcpus", filter=running),
            memory_mib=Sum("hardware__memory_mib", filter=running),
            disk_bytes=Sum("disk__actual_size_bytes"),
        )
    )
    for row in rows:
        yield row.pop("owner_id"), row
