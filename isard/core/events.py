"""What every status-change row has: who, why and when (desktops', templates', media's).

Abstract: each room's event model adds the foreign key to its object and the two status
fields with its own choices.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class StatusEvent(models.Model):
    """One row per status change (and per notable action), oldest first."""

    reason = models.TextField(blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        abstract = True
        ordering = ["created_at", "pk"]
