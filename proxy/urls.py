from __future__ import annotations

from django.urls import path, re_path

from . import count_tokens, stored_responses, usage, views

# [\s\S], not ".": a path may hold a decoded newline (/v1/models/m%0d%0a...), which "." does not match, and a path
# no pattern matches would get Django's HTML 404 instead of the JSON envelope.
urlpatterns = [
    path("chat/completions", views.chat_completions),
    path("completions", views.completions),
    path("embeddings", views.embeddings),
    path("messages", views.messages),
    path("messages/count_tokens", count_tokens.count_tokens),
    path("responses", views.responses),
    re_path(r"^responses/(?P<response_id>[^/]+)/cancel$", stored_responses.cancel),
    re_path(r"^responses/(?P<response_id>[^/]+)/input_items$", stored_responses.input_items),
    re_path(r"^responses/(?P<response_id>[^/]+)$", stored_responses.detail),
    path("models", views.models_list),
    path("usage", usage.key_usage),
    re_path(r"^models/(?P<model>[\s\S]+)$", views.model_detail),
    re_path(r"^(?P<path>[\s\S]*)$", views.unknown_endpoint),
]
