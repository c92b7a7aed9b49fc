"""Give every student of a course a desktop from a template, and optionally start them all."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from accounts.choices import CourseRole
from accounts.models import Course, User
from desktops.choices import BUSY_STATUSES, DesktopStatus
from desktops.models import Desktop
from desktops.services.lifecycle import desktop_start
from desktops.services.provisioning import desktops_create_bulk
from isard.core.errors import ApplicationError
from templates_app.models import Template


class Command(BaseCommand):
    help = (
        "Create a desktop from TEMPLATE for every student of COURSE (run by the platform's "
        "worker), wait until they are ready, and with --start start them all at once."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("template", help="Template name")
        parser.add_argument("course", help="Course name")
        parser.add_argument("--as", dest="actor", help="Acting teacher or admin (username)")
        parser.add_argument("--name", help="Desktop name (default: the template's)")
        parser.add_argument("--start", action="store_true", help="Start every desktop at once")
        parser.add_argument("--timeout", type=float, default=600, help="Seconds to wait")

    def handle(self, *args: Any, **options: Any) -> None:
        template = Template.objects.filter(
            name=options["template"], deleted_at__isnull=True
        ).first()
        course = Course.objects.filter(name=options["course"]).first()
        if template is None or course is None:
            raise CommandError("No such template or course.")
        if options["actor"]:
            actor = User.objects.filter(username=options["actor"]).first()
        else:
            membership = course.memberships.filter(role=CourseRole.TEACHER).first()
            actor = membership.user if membership else None
        if actor is None:
            raise CommandError("Name an acting teacher or admin with --as.")
        students = [
            m.user
            for m in course.memberships.filter(role=CourseRole.STUDENT).select_related("user")
        ]
        if not students:
            raise CommandError(f"The course “{course.name}” has no students.")
        try:
            desktops = desktops_create_bulk(
                actor=actor,
                template=template,
                owners=students,
                name=options["name"] or template.name,
                course=course,
            )
        except ApplicationError as error:
            raise CommandError(error.message) from error
        ids = [d.pk for d in desktops]
        self.stdout.write(f"creating {len(ids)} desktops for {course.name}...")
        self._wait(ids, lambda s: s not in BUSY_STATUSES, options["timeout"], "created")
        failed = Desktop.objects.filter(pk__in=ids, status=DesktopStatus.FAILED)
        for desktop in failed:
            self.stderr.write(f"{desktop.owner}: {desktop.status_reason}")
        if not options["start"]:
            return
        started_at = time.monotonic()
        for desktop in Desktop.objects.filter(pk__in=ids, status=DesktopStatus.STOPPED):
            desktop_start(actor=desktop.owner, desktop=desktop)
        self._wait(ids, lambda s: s not in BUSY_STATUSES, options["timeout"], "started")
        running = Desktop.objects.filter(pk__in=ids, status=DesktopStatus.STARTED).count()
        self.stdout.write(
            f"{running} of {len(ids)} desktops started in {time.monotonic() - started_at:.1f} s"
        )

    def _wait(self, ids: list[int], done: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            statuses = list(Desktop.objects.filter(pk__in=ids).values_list("status", flat=True))
            if all(done(status) for status in statuses):
                counts = {s: statuses.count(s) for s in sorted(set(statuses))}
                self.stdout.write(f"{what}: {counts}")
                return
            time.sleep(0.5)
        raise CommandError(
            f"not all desktops were {what} within {timeout:.0f} s (is the worker up?)"
        )
