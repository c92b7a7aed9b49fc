"""Teachers' media page: upload an install ISO with a progress bar, install a desktop from it.

Thin: every write is a service in `templates_app.services` (uploads) or
`desktops.services` (a desktop from media). The upload speaks small JSON so that
`static/isard/upload.js` can send a large file in chunks and resume after a dropped
connection; refusals come back as {"message", "extra"} with the service's status code.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.models import Course, User
from accounts.permissions import courses_visible_to
from isard.core.errors import ApplicationError
from templates_app.choices import MediaStatus, TemplateStatus
from templates_app.models import HardwareProfile, Media
from templates_app.permissions import templates_managed_by
from templates_app.selectors import media_owned_by
from templates_app.services import uploads
from templates_app.services.templates import template_set_sharing


def _user(request: HttpRequest) -> User:
    assert isinstance(request.user, User)  # login_required let only signed-in users in
    return request.user


def _refusal(error: ApplicationError) -> JsonResponse:
    return JsonResponse({"message": error.message, "extra": error.extra}, status=error.status_code)


def _upload_state(media: Media) -> dict[str, Any]:
    return {
        "id": media.pk,
        "name": media.name,
        "status": media.status,
        "status_label": media.get_status_display(),
        "size": media.size_bytes,
        "offset": uploads.media_upload_received(media)
        if media.status == MediaStatus.UPLOADING
        else media.size_bytes,
        "progress_percent": media.progress_percent,
        "chunk_url": reverse("media-upload", args=[media.pk]),
        "finish_url": reverse("media-upload-finish", args=[media.pk]),
    }


@login_required
@require_GET
def media_page(request: HttpRequest) -> HttpResponse:
    user = _user(request)
    if not user.is_teacher:
        return render(request, "desktops/not_found.html", {"what": "page"}, status=404)
    media = Media.objects.filter(owner=user).order_by("-created_at")
    context = {
        "media": media,
        "ready": [m for m in media if m.status == MediaStatus.READY],
        "profiles": HardwareProfile.objects.order_by("name"),
    }
    return render(request, "templates_app/media.html", context)


@login_required
@require_POST
def media_upload_begin(request: HttpRequest) -> JsonResponse:
    try:
        size = int(request.POST.get("size", ""))
    except ValueError:
        return JsonResponse({"message": "The file's size is missing.", "extra": {}}, status=400)
    try:
        media = uploads.media_upload_begin(
            actor=_user(request),
            name=request.POST.get("name", ""),
            size_bytes=size,
            kind=request.POST.get("kind", "iso"),
        )
    except ApplicationError as error:
        return _refusal(error)
    return JsonResponse(_upload_state(media), status=201)


@login_required
@require_http_methods(["GET", "POST"])
def media_upload(request: HttpRequest, media_id: int) -> JsonResponse:
    """GET: where the upload stands (to resume). POST ?offset=N: the next chunk as the body."""
    try:
        media = media_owned_by(_user(request), media_id)
        if request.method == "POST":
            try:
                offset = int(request.GET.get("offset", ""))
            except ValueError:
                return JsonResponse(
                    {"message": "Say where this chunk starts (?offset=).", "extra": {}}, status=400
                )
            uploads.media_upload_chunk(
                actor=_user(request), media=media, offset=offset, stream=request
            )
            media.refresh_from_db()
    except ApplicationError as error:
        return _refusal(error)
    return JsonResponse(_upload_state(media))


@login_required
@require_POST
def media_upload_finish(request: HttpRequest, media_id: int) -> JsonResponse:
    try:
        media = media_owned_by(_user(request), media_id)
        media = uploads.media_upload_finish(
            actor=_user(request), media=media, sha256=request.POST.get("sha256", "")
        )
    except ApplicationError as error:
        return _refusal(error)
    return JsonResponse(_upload_state(media), status=202)


@login_required
@require_POST
def media_upload_cancel(request: HttpRequest, media_id: int) -> HttpResponse:
    """Drop an unfinished upload (its part file and its row); a form, or fetch for JSON."""
    try:
        media = media_owned_by(_user(request), media_id)
        uploads.media_upload_cancel(actor=_user(request), media=media)
    except ApplicationError as error:
        if "application/json" in request.headers.get("Accept", ""):
            return _refusal(error)
        messages.error(request, error.message)
        return redirect("media-page")
    if "application/json" in request.headers.get("Accept", ""):
        return JsonResponse({"id": media_id, "cancelled": True})
    messages.success(request, f"The upload of “{media.name}” was cancelled.")
    return redirect("media-page")


# --- teachers' templates: what they made, its state, and who may use it ----------------------


@login_required
@require_GET
def template_list(request: HttpRequest) -> HttpResponse:
    """My templates: their state (with progress while one is made) and their sharing."""
    user = _user(request)
    if not user.is_teacher:
        return render(request, "desktops/not_found.html", {"what": "page"}, status=404)
    templates = (
        templates_managed_by(user)
        .exclude(status=TemplateStatus.DELETED)
        .select_related("parent", "owner")
        .prefetch_related("shared_courses")
        .order_by("name", "pk")
    )
    context = {
        "templates": templates,
        "courses": courses_visible_to(user).order_by("name"),
    }
    return render(request, "templates_app/templates.html", context)


@login_required
@require_POST
def template_sharing(request: HttpRequest, template_id: int) -> HttpResponse:
    """Share one of my templates with the courses ticked (and only those)."""

    user = _user(request)
    template = templates_managed_by(user).filter(pk=template_id).first()
    if template is None:
        return render(request, "desktops/not_found.html", {"what": "template"}, status=404)
    ids = [int(value) for value in request.POST.getlist("courses") if value.isdigit()]
    try:
        # Unknown or foreign course ids go to the service, which refuses them by name.
        template = template_set_sharing(
            actor=user, template=template, courses=list(Course.objects.filter(pk__in=ids))
        )
    except ApplicationError as error:
        messages.error(request, error.message)
    else:
        names = ", ".join(course.name for course in template.shared_courses.order_by("name"))
        messages.success(
            request,
            f"“{template.name}” is shared with {names}."
            if names
            else f"“{template.name}” is shared with no course.",
        )
    return redirect("template-page-list")
