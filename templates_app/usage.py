"""What each person's templates and media count towards their quotas (`accounts.quotas`)."""

from __future__ import annotations

from collections.abc import Iterator

from django.db.models import Count, Q, Sum

from templates_app.choices import MediaStatus, TemplateStatus
from templates_app.models import Media, Template


def template_usage(owner_ids: list[int]) -> Iterator[tuple[int, dict[str, int]]]:
    """Templates not failed nor in the recycle bin; their disks' real size (all of them:
    a template's disk stays until it is purged)."""
    rows = (
        Template.objects.filter(owner_id__in=owner_ids)
        .values("owner_id")
        .annotate(
            templates=Count(
                "pk", filter=~Q(status__in=[TemplateStatus.DELETED, TemplateStatus.FAILED])
            ),
            disk_bytes=Sum("disk__actual_size_bytes"),
        )
    )
    for row in rows:
        yield row.pop("owner_id"), row


def media_usage(owner_ids: list[int]) -> Iterator[tuple[int, dict[str, int]]]:
    """Media that did not fail, and their size. An upload still under way does not count:
    its declared size is checked when it begins and again, against what is used then,
    when it finishes (`templates_app.services.uploads`), so one left unfinished never
    holds the quota (it expires)."""
    rows = (
        Media.objects.filter(owner_id__in=owner_ids)
        .exclude(status__in=[MediaStatus.FAILED, MediaStatus.UPLOADING])
        .values("owner_id")
        .annotate(media=Count("pk"), disk_bytes=Sum("size_bytes"))
    )
    for row in rows:
        yield row.pop("owner_id"), row
