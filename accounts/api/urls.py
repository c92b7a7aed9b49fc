from __future__ import annotations

from django.urls import path
from rest_framework.routers import SimpleRouter

from accounts.api import views

router = SimpleRouter()
router.register("auth/tokens", views.ApiTokenViewSet, basename="api-token")
router.register("courses", views.CourseViewSet, basename="course")
router.register("quotas", views.QuotaViewSet, basename="quota")

urlpatterns = [
    path("auth/login/", views.LoginView.as_view(), name="api-login"),
    path("auth/logout/", views.LogoutView.as_view(), name="api-logout"),
    path("me/", views.MeView.as_view(), name="api-me"),
    path("me/usage/", views.MyUsageView.as_view(), name="api-my-usage"),
    path("users/<int:user_id>/usage/", views.UserUsageView.as_view(), name="api-user-usage"),
    *router.urls,
]
