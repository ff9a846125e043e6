from __future__ import annotations

from django.urls import path

from . import files, views

# Mounted under /v1/ before the proxy's own patterns; a path not matched here falls through to them.
urlpatterns = [
    path("files", files.files),
    path("files/<str:file_id>", files.file_detail),
    path("files/<str:file_id>/content", files.file_content),
    path("batches", views.batches),
    path("batches/<str:batch_id>", views.batch_detail),
    path("batches/<str:batch_id>/cancel", views.batch_cancel),
]
