"""Desktops and their audit trail."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import models

from desktops.choices import DesktopStatus
from isard.core.events import StatusEvent
from isard.core.text import validate_name, validate_text


class Desktop(models.Model):
    """A user's virtual machine: its disk is an overlay on a template's (or a fresh disk).

    `status` is changed only by `desktops.services.desktop_transition`.
    """

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(validators=[validate_name], max_length=200)
    description = models.TextField(validators=[validate_text], blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="desktops"
    )
    course = models.ForeignKey(
        "accounts.Course", null=True, blank=True, on_delete=models.SET_NULL, related_name="desktops"
    )
    template = models.ForeignKey(
        "templates_app.Template",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="desktops",
    )
    hardware = models.ForeignKey(
        "templates_app.HardwareProfile", on_delete=models.PROTECT, related_name="desktops"
    )
    media = models.ManyToManyField("templates_app.Media", blank=True, related_name="desktops")
    disk = models.ForeignKey(
        "hypervisors.Disk", null=True, blank=True, on_delete=models.PROTECT, related_name="desktops"
    )
    hypervisor = models.ForeignKey(
        "hypervisors.Hypervisor",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="desktops",
        help_text="Where the domain is defined (and runs when started).",
    )
    status = models.CharField(
        max_length=24, choices=DesktopStatus.choices, default=DesktopStatus.CREATING, db_index=True
    )
    status_reason = models.TextField(blank=True)
    status_changed_at = models.DateTimeField(auto_now_add=True)
    #: Random per start; handed only to the owner's viewer.
    graphics_password = models.CharField(max_length=64, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    deployment = models.ForeignKey(
        "desktops.Deployment",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="desktops",
        help_text="The deployment that made it for its owner, if any.",
    )
    pool = models.ForeignKey(
        "desktops.Pool",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="desktops",
        help_text="The pool it was made for: free (its teacher's) until a student takes it.",
    )
    #: When a student took it from its pool (it is theirs since); None: still free.
    pool_taken_at = models.DateTimeField(null=True, blank=True)
    volatile = models.BooleanField(
        default=False,
        help_text="Back to its template (a fresh disk) whenever it stops or its owner signs "
        "out; set from its pool or deployment.",
    )
    #: When the running session ends (its course's time limit), and when its student is
    #: warned (None once warned, or without a limit); `desktops.services.time_limits`.
    session_ends_at = models.DateTimeField(null=True, blank=True, db_index=True)
    session_warn_at = models.DateTimeField(null=True, blank=True)
    session_extensions_used = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["name", "pk"]
        constraints = [
            # However many requests race, a student holds one desktop of a pool.
            models.UniqueConstraint(
                fields=["pool", "owner"],
                condition=models.Q(pool_taken_at__isnull=False),
                name="desktop_one_per_student_and_pool",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def domain_name(self) -> str:
        """The libvirt domain name: stable, unique, and recognisable as ours on a shared host."""
        return f"isard-{self.uuid}"


class DesktopEvent(StatusEvent):
    """One row per status change (and per notable action), oldest first."""

    desktop = models.ForeignKey(Desktop, on_delete=models.CASCADE, related_name="events")
    from_status = models.CharField(max_length=24, choices=DesktopStatus.choices, blank=True)
    to_status = models.CharField(max_length=24, choices=DesktopStatus.choices)

    subject_field = "desktop"

    class Meta(StatusEvent.Meta):
        pass

    def __str__(self) -> str:
        return f"{self.desktop}: {self.from_status or '-'} -> {self.to_status}"

    def log_fields(self) -> dict[str, Any]:
        fields = super().log_fields()
        desktop = self._state.fields_cache.get("desktop")
        host = desktop._state.fields_cache.get("hypervisor") if desktop is not None else None
        fields["owner_id"] = desktop.owner_id if desktop is not None else None
        fields["host_id"] = desktop.hypervisor_id if desktop is not None else None
        fields["host"] = host.name if host is not None else ""
        return fields


class ViewerProtocol(models.TextChoices):
    """How a viewer reaches a desktop's screen."""

    BROWSER_VNC = "browser-vnc", "Browser (noVNC over the websocket proxy)"
    SPICE_TLS = "spice-tls", "SPICE client over TLS (.vv file)"


class ViewerToken(models.Model):
    """A single-use, short-lived permission for one user to open one desktop's viewer.

    Only a SHA-256 of the secret is stored, so a copy of the database opens no screen.
    `used_at` is set by one conditional update (`WHERE used_at IS NULL`): of two
    connections racing with the same token, exactly one wins.
    """

    key_hash = models.CharField(max_length=64, unique=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="viewer_tokens"
    )
    desktop = models.ForeignKey(Desktop, on_delete=models.CASCADE, related_name="viewer_tokens")
    protocol = models.CharField(max_length=16, choices=ViewerProtocol.choices)
    #: Issued to someone other than the owner (the course's teacher): the proxy joins the
    #: display as a shared client and drops every key, pointer and clipboard event.
    view_only = models.BooleanField(default=False)
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)
    used_at = models.DateTimeField(null=True, blank=True)
    used_from = models.CharField(max_length=100, blank=True)
    #: Issued to whoever opened this direct link (signed in or not): `user` is then the
    #: desktop's owner, whose screen it opens, and the link is checked again on connect.
    direct_link = models.ForeignKey(
        "desktops.DirectLink",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="viewer_tokens",
    )

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(expires_at__gt=models.F("created_at")),
                name="viewertoken_expires_after_creation",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_protocol_display()} for {self.desktop} ({self.user})"


class GatewayCredential(models.Model):
    """What a `.vv` file's `proxy=` line carries: lets remote-viewer tunnel through the
    platform's SPICE gateway (`desktops.viewer.gateway`) to one desktop's display.

    remote-viewer sends it as HTTP Basic proxy authentication (`public_id:secret`) on
    every channel it opens, so it is reusable until it expires or is revoked. Only a
    SHA-256 of the secret is stored. It opens nothing by itself: the tunnel reaches only
    the desktop's current SPICE TLS port, whose own password expires within minutes.
    """

    public_id = models.CharField(max_length=32, unique=True)
    key_hash = models.CharField(max_length=64)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="gateway_credentials"
    )
    desktop = models.ForeignKey(
        Desktop, on_delete=models.CASCADE, related_name="gateway_credentials"
    )
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)
    revoked = models.BooleanField(default=False)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(expires_at__gt=models.F("created_at")),
                name="gatewaycredential_expires_after_creation",
            ),
        ]

    def __str__(self) -> str:
        return f"gateway credential {self.public_id} for {self.desktop} ({self.user})"


class DirectLink(models.Model):
    """A link that opens one desktop's browser viewer without signing in (an exam, a guest).

    Whoever holds the URL (`/v/<token>/`) gets the owner's interactive viewer, and the
    desktop is started for them if it is stopped, until `expires_at` or `revoked_at`.
    Only a SHA-256 of the secret is stored, so a copy of the database opens no screen;
    the URL is shown once, when the link is made (`desktops.viewer.direct_links`).
    """

    key_hash = models.CharField(max_length=64, unique=True)
    desktop = models.ForeignKey(Desktop, on_delete=models.CASCADE, related_name="direct_links")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="direct_links_made"
    )
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    uses = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(expires_at__gt=models.F("created_at")),
                name="directlink_expires_after_creation",
            ),
        ]

    def __str__(self) -> str:
        return f"direct link {self.pk} to {self.desktop}"

    def is_live(self, now: datetime) -> bool:
        """Neither revoked nor expired at `now`."""
        return self.revoked_at is None and self.expires_at > now


class Deployment(models.Model):
    """A template given to the students of a course (all of them, or those chosen).

    One desktop per student, made in bulk. While `visible` is off the students do not see
    their desktops (the teacher prepares or closes the exercise). The owner and the
    co-teachers act on it; `deleted_at` is set when it went to the recycle bin with its
    desktops. The services are in `desktops.deployments`.
    """

    name = models.CharField(validators=[validate_name], max_length=200)
    description = models.TextField(validators=[validate_text], blank=True)
    course = models.ForeignKey(
        "accounts.Course", on_delete=models.PROTECT, related_name="deployments"
    )
    template = models.ForeignKey(
        "templates_app.Template", on_delete=models.PROTECT, related_name="deployments"
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="deployments"
    )
    co_teachers = models.ManyToManyField(
        settings.AUTH_USER_MODEL, blank=True, related_name="co_taught_deployments"
    )
    #: False: only `students` get desktops (the course's students chosen at creation).
    whole_course = models.BooleanField(default=True)
    students = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="+")
    visible = models.BooleanField(default=True)
    volatile = models.BooleanField(
        default=False,
        help_text="Each desktop goes back to the template when it stops or its student "
        "signs out: nothing a student does is kept.",
    )
    deleted_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.name} ({self.course})"


class UsageHour(models.Model):
    """The seconds one desktop ran in one hour (UTC), kept after the desktop is purged.

    Written by `desktops.reports.rollup` from the desktops' event rows, once the hour is
    over; the hours since are read from the event rows as they are asked for. The owner,
    course, template and school are the desktop's at that time, so a purged desktop (its
    events go with it) still counts towards its student, course, template and school.
    """

    hour = models.DateTimeField(db_index=True, help_text="The start of the hour, in UTC.")
    desktop = models.ForeignKey(
        Desktop, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    desktop_name = models.CharField(max_length=200)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    course = models.ForeignKey(
        "accounts.Course", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    template = models.ForeignKey(
        "templates_app.Template",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    school = models.ForeignKey(
        "accounts.School", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    seconds = models.PositiveIntegerField()

    class Meta:
        ordering = ["hour", "pk"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(seconds__lte=3600), name="usagehour_at_most_an_hour"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.desktop_name} {self.hour:%Y-%m-%d %H}:00 {self.seconds} s"


class UsageRollup(models.Model):
    """How far the event rows have been summed into `UsageHour` rows: one row."""

    until = models.DateTimeField(help_text="Every hour before this is in the usage rows.")

    def __str__(self) -> str:
        return f"usage summed until {self.until}"


class Pool(models.Model):
    """Desktops of a course kept ready from a template: a student who opens it gets one
    at once (`desktops.pools.services.pool_take`).

    `started` desktops are kept running and `spare` more defined (stopped); the free
    ones belong to the pool's owner until taken. A taken desktop is its student's, as
    if made for them. `problem` says why the last refill fell short (a quota, no host).
    """

    name = models.CharField(validators=[validate_name], max_length=200)
    course = models.ForeignKey("accounts.Course", on_delete=models.PROTECT, related_name="pools")
    template = models.ForeignKey(
        "templates_app.Template", on_delete=models.PROTECT, related_name="pools"
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="pools"
    )
    started = models.PositiveSmallIntegerField(
        default=0, help_text="Free desktops kept running, for a hand-out at once."
    )
    spare = models.PositiveSmallIntegerField(
        default=0, help_text="Free desktops kept defined besides (started when taken)."
    )
    volatile = models.BooleanField(
        default=False,
        help_text="A taken desktop goes back to the template and to the pool when its "
        "student shuts it down or signs out.",
    )
    problem = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    #: Deleted by its teacher: its free desktops go, its students keep the ones they took.
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name", "pk"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(started__lte=200, spare__lte=200), name="pool_sizes_bounded"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.course})"


class EarlierDisk(models.Model):
    """A desktop's disk put aside by a reset to its template: in the recycle bin, so the
    work on it can be put back (`desktops.services.renewal`) until the retention ends."""

    desktop = models.ForeignKey(Desktop, on_delete=models.PROTECT, related_name="earlier_disks")
    disk = models.OneToOneField("hypervisors.Disk", on_delete=models.PROTECT, related_name="+")
    put_aside_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-put_aside_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.desktop}: disk of {self.put_aside_at:%Y-%m-%d %H:%M}"
