from __future__ import annotations

from django.urls import path, re_path

from . import views

urlpatterns = [
    path("chat/completions", views.chat_completions),
    path("completions", views.completions),
    path("embeddings", views.embeddings),
    path("models", views.models_list),
    re_path(r"^models/(?P<model>.+)$", views.model_detail),
    re_path(r"^(?P<path>.*)$", views.unknown_endpoint),
]
