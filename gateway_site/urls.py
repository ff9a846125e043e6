from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path
from django.views.static import serve

urlpatterns = [
    path("v1/", include("proxy.urls")),
    path("admin/", admin.site.urls),
]

if settings.TOLLGATE_SERVE_STATIC:
    urlpatterns.append(
        re_path(r"^static/(?P<path>.*)$", serve, {"document_root": settings.STATIC_ROOT}),
    )
