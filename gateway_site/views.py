"""Site-wide views: sign-in and password reset behind django-ratelimit, and the page shown when it refuses.

django-ratelimit's middleware is sync-only and would push every async view of the pages stack through a thread,
so the views check ``request.limited`` themselves (block=False).
"""

from __future__ import annotations

from django.contrib.auth import views as auth
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django_ratelimit.decorators import ratelimit


def rate_limited(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/api/"):
        response: HttpResponse = JsonResponse({"detail": "Too many requests. Try again in a minute."}, status=429)
    else:
        response = render(request, "pages/rate_limited.html", {"title": "Too many attempts"}, status=429)
    response["Retry-After"] = "60"
    return response


@ratelimit(key="ip", rate="20/m", method="POST", block=False)
@ratelimit(key="post:username", rate="5/m", method="POST", block=False)
def sign_in(request: HttpRequest) -> HttpResponse:
    """Sign-in, limited per address and per account name (in the "limits" cache)."""
    if getattr(request, "limited", False):
        return rate_limited(request)
    return auth.LoginView.as_view()(request)


@ratelimit(key="ip", rate="5/m", method="POST", block=False)
def password_reset(request: HttpRequest) -> HttpResponse:
    if getattr(request, "limited", False):
        return rate_limited(request)
    return auth.PasswordResetView.as_view()(request)
