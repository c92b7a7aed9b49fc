"""Pools in the admin: what each holds, live (the list refreshes itself), and a refill.

Read-only forms: a pool is made on the course page or through the API, and its sizes
set there, through `desktops.pools.services`, which checks the person."""

from __future__ import annotations

from typing import Any, ClassVar, cast

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.admin_scope import ActionsOnlyAdmin, ManagerAccess
from accounts.models import User
from desktops.models import Pool
from desktops.pools.selectors import pool_counts, pools_managed_by
from desktops.pools.services import pool_delete, pool_refill
from isard.core.errors import ApplicationError


@admin.register(Pool)
class PoolAdmin(ActionsOnlyAdmin):
    manager_access: ClassVar[ManagerAccess] = "act"
    teacher_access: ClassVar[ManagerAccess] = "act"
    list_display = (
        "name",
        "course",
        "template",
        "started_now",
        "ready_now",
        "taken_now",
        "problem",
    )
    list_filter = (("course", admin.RelatedOnlyFieldListFilter),)
    search_fields = ("name", "course__name")
    fields = (
        "name",
        "course",
        "template",
        "owner",
        "started",
        "spare",
        "volatile",
        "problem",
        "created_at",
    )
    readonly_fields = fields
    actions = ["refill", "delete_pools"]

    class Media:
        js = ("isard/admin_live.js",)

    def scope_queryset(self, actor: User, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(pk__in=pools_managed_by(actor).values("pk"))  # not deleted

    @admin.display(description="started (free)")
    def started_now(self, pool: Pool) -> str:
        return f"{pool_counts(pool).started} of {pool.started}"

    @admin.display(description="ready (free, stopped)")
    def ready_now(self, pool: Pool) -> str:
        counts = pool_counts(pool)
        making = f", {counts.making} on the way" if counts.making else ""
        return f"{counts.ready}{making}"

    @admin.display(description="taken")
    def taken_now(self, pool: Pool) -> int:
        return pool_counts(pool).taken

    @admin.action(description="Delete selected pools (free desktops go; taken ones stay)")
    def delete_pools(self, request: HttpRequest, queryset: QuerySet[Pool]) -> None:
        actor = cast(User, request.user)
        for pool in queryset:
            try:
                pool_delete(actor=actor, pool=pool)
            except ApplicationError as error:
                self.message_user(request, f"{pool.name}: {error.message}", messages.ERROR)
                continue
            self.message_user(request, f"{pool.name}: deleted.", messages.SUCCESS)

    @admin.action(description="Refill now (make and start up to the sizes)")
    def refill(self, request: HttpRequest, queryset: QuerySet[Pool]) -> None:
        for pool in queryset:
            done = pool_refill(pool_id=pool.pk)
            pool.refresh_from_db()
            level = messages.WARNING if pool.problem else messages.SUCCESS
            problem = f" {pool.problem}" if pool.problem else ""
            made, started = done.get("made", 0), done.get("started", 0)
            self.message_user(
                request, f"{pool.name}: {made} made, {started} started.{problem}", level
            )
