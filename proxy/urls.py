from __future__ import annotations

from django.urls import re_path

from . import views

urlpatterns = [
    re_path(r"^(?P<path>.*)$", views.unknown_endpoint),
]
