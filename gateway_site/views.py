"""Site-wide views: the page shown when django-ratelimit refuses a sign-in or an API call."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render


def rate_limited(request: HttpRequest, exception: Exception) -> HttpResponse:
    if request.path.startswith("/api/"):
        response: HttpResponse = JsonResponse({"detail": "Too many requests. Try again in a minute."}, status=429)
    else:
        response = render(request, "pages/rate_limited.html", {"title": "Too many attempts"}, status=429)
    response["Retry-After"] = "60"
    return response
