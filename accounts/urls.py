"""The people pages, under /accounts/ (see isard/urls.py)."""

from __future__ import annotations

from django.urls import path

from accounts import views

app_name = "accounts"

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", views.SignInView.as_view(), name="sign-in"),
    path("logout/", views.SignOutView.as_view(), name="sign-out"),
    path("signup/", views.sign_up, name="sign-up"),
    path("join/", views.join_course, name="join"),
    path("password/", views.choose_password, name="password"),
    path("courses/<int:course_id>/codes/<str:role>/", views.course_code, name="course-code"),
]
