"""Top-level URLs."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path, re_path

from desktops import views as desktop_views
from desktops.reports import views as usage_views
from isard.health import health_view
from isard.metrics_view import metrics_view
from templates_app import views as template_views

admin.site.site_header = "isard administration"
admin.site.site_title = "isard"

urlpatterns = [
    path("", desktop_views.dashboard, name="dashboard"),
    path("desktops/new/", desktop_views.desktop_new, name="desktop-new"),
    path(
        "desktops/<int:desktop_id>/template/",
        desktop_views.desktop_make_template,
        name="desktop-make-template",
    ),
    path("pools/<int:pool_id>/take/", desktop_views.pool_take_view, name="pool-take-page"),
    path("media/", template_views.media_page, name="media-page"),
    path("media/uploads/", template_views.media_upload_begin, name="media-upload-begin"),
    path("media/<int:media_id>/upload/", template_views.media_upload, name="media-upload"),
    path(
        "media/<int:media_id>/upload/finish/",
        template_views.media_upload_finish,
        name="media-upload-finish",
    ),
    path(
        "media/<int:media_id>/upload/cancel/",
        template_views.media_upload_cancel,
        name="media-upload-cancel",
    ),
    path("media/install/", desktop_views.media_install_desktop, name="media-install"),
    path("templates/", template_views.template_list, name="template-page-list"),
    path(
        "templates/<int:template_id>/sharing/",
        template_views.template_sharing,
        name="template-page-sharing",
    ),
    path("courses/", desktop_views.course_list, name="course-page-list"),
    path("courses/<int:course_id>/", desktop_views.course_detail, name="course-page"),
    path("courses/<int:course_id>/deploy/", desktop_views.course_deploy, name="course-deploy"),
    path("courses/<int:course_id>/pools/", desktop_views.course_pool_new, name="course-pool-new"),
    path("pools/<int:pool_id>/delete/", desktop_views.pool_delete_view, name="pool-delete"),
    path(
        "courses/<int:course_id>/settings/",
        desktop_views.course_settings,
        name="course-settings",
    ),
    path(
        "deployments/<int:deployment_id>/direct-links.csv",
        desktop_views.deployment_direct_links_csv,
        name="deployment-direct-links-csv",
    ),
    path(
        "deployments/<int:deployment_id>/direct-links/revoke/",
        desktop_views.deployment_direct_links_revoke,
        name="deployment-direct-links-revoke",
    ),
    path(
        "deployments/<int:deployment_id>/<slug:action>/",
        desktop_views.deployment_action,
        name="deployment-action",
    ),
    re_path(
        r"^desktops/(?P<desktop_id>[0-9]+)/(?P<action>start|shutdown|stop|delete|restore"
        r"|reset-to-template|put-back|extend)/$",
        desktop_views.desktop_action,
        name="desktop-action",
    ),
    path("health/", health_view, name="health"),
    path("metrics", metrics_view, name="metrics"),
    # The usage page lives in the admin: its sign-in, its header, its users.
    path("admin/usage/", admin.site.admin_view(usage_views.usage_page), name="admin-usage"),
    path(
        "admin/usage/usage.csv",
        admin.site.admin_view(usage_views.usage_csv),
        name="admin-usage-csv",
    ),
    path("admin/", admin.site.urls),
    path("api/v1/", include("isard.api.urls")),
    path("accounts/", include("accounts.urls")),
]

# Opening a desktop: the browser viewer, a token to reconnect, the .vv file (issue 5).
from desktops.viewer import views as viewer_views  # noqa: E402

urlpatterns += [
    path(
        "desktops/<int:desktop_id>/viewer/",
        viewer_views.viewer_page,
        name="desktop-viewer",
    ),
    path(
        "desktops/<int:desktop_id>/viewer/token/",
        viewer_views.viewer_token,
        name="desktop-viewer-token",
    ),
    path(
        "desktops/<int:desktop_id>/viewer.vv",
        viewer_views.viewer_vv,
        name="desktop-viewer-vv",
    ),
    path(
        "desktops/<int:desktop_id>/viewer.rdp",
        viewer_views.viewer_rdp,
        name="desktop-viewer-rdp",
    ),
    # A direct link (no sign-in): the token is the whole credential.
    path("v/<str:token>/", viewer_views.direct_link_page, name="direct-link"),
    path("v/<str:token>/token/", viewer_views.direct_link_token, name="direct-link-token"),
]
