"""Site-wide views: sign-in and password reset behind django-ratelimit, the page shown when it refuses, and static files.

django-ratelimit's middleware is sync-only and would push every async view of the pages stack through a thread,
so the views check the limits themselves.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import AsyncIterator, Callable, Iterable

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth
from django.core.cache import caches
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse, HttpResponseBase, HttpResponsePermanentRedirect, JsonResponse
from django.shortcuts import render
from django.templatetags.static import static
from django.views.static import serve
from django_ratelimit.core import get_usage
from django_ratelimit.decorators import ratelimit

from accounts import sso

# Sign-in is limited per address and per address and account, so nobody can lock a user out from elsewhere.
ADDRESS_RATE = "20/m"
ADDRESS_ACCOUNT_RATE = "5/m"
# An account-wide limit only for a spread-out attack: once more than this many addresses failed for one account in
# the window, addresses that never signed in to it are refused until the window ends. Its known addresses still get in.
ACCOUNT_ADDRESSES, ACCOUNT_WINDOW = 10, 15 * 60
ACCOUNT_RATE = f"{ACCOUNT_ADDRESSES}/{ACCOUNT_WINDOW}s"
KNOWN_ADDRESS_SECONDS = 30 * 24 * 3600

View = Callable[[HttpRequest], HttpResponseBase]


def rate_limited(request: HttpRequest, *, retry_after: int = 60) -> HttpResponse:
    wait = max(retry_after, 1)
    when = f"{wait} seconds" if wait < 120 else f"{-(-wait // 60)} minutes"
    if request.path.startswith("/api/"):
        response: HttpResponse = JsonResponse({"detail": f"Too many requests. Try again in {when}."}, status=429)
    else:
        response = render(request, "pages/rate_limited.html", {"title": "Too many attempts", "when": when}, status=429)
    response["Retry-After"] = str(wait)
    return response


def client_address(request: HttpRequest) -> str:
    # An IPv6 client usually holds a whole /64, so that is what counts as one address (as django-ratelimit does).
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR") or "")
    except ValueError:
        return "unknown"
    return str(ipaddress.ip_network(f"{address}/64", strict=False).network_address) if address.version == 6 else str(address)


def account_name(request: HttpRequest) -> str:
    # Hashed: cache keys hold no account names, and case or spaces do not make a new account to count against.
    return hashlib.sha256(request.POST.get("username", "").strip().casefold().encode()).hexdigest()[:32]


def _marker(kind: str, account: str, address: str) -> str:
    return f"sign-in:{kind}:" + hashlib.sha256(f"{account}|{address}".encode()).hexdigest()[:32]


def _usage(request: HttpRequest, group: str, value: str, rate: str, *, increment: bool) -> dict[str, int] | None:
    return get_usage(request, group=group, key=lambda _group, _request: value, rate=rate, increment=increment)


def sign_in_wait(request: HttpRequest) -> int:
    """Count this sign-in attempt. Returns the seconds to wait when a limit refuses it, else 0."""
    address, account = client_address(request), account_name(request)
    usages = [_usage(request, "sign-in:address", address, ADDRESS_RATE, increment=True),
              _usage(request, "sign-in:address-account", f"{address}|{account}", ADDRESS_ACCOUNT_RATE, increment=True)]
    if not caches[settings.RATELIMIT_USE_CACHE].get(_marker("known", account, address)):
        usages.append(_usage(request, "sign-in:account", account, ACCOUNT_RATE, increment=False))
    return max((max(usage["time_left"], 1) for usage in usages if usage and usage["should_limit"]), default=0)


def note_sign_in(request: HttpRequest, *, succeeded: bool) -> None:
    """Remember an address that signed in to the account, or count it once among the addresses failing for it."""
    cache = caches[settings.RATELIMIT_USE_CACHE]
    address, account = client_address(request), account_name(request)
    if succeeded:
        cache.set(_marker("known", account, address), 1, KNOWN_ADDRESS_SECONDS)
    elif cache.add(_marker("failed", account, address), 1, ACCOUNT_WINDOW):
        _usage(request, "sign-in:account", account, ACCOUNT_RATE, increment=True)


def throttled_sign_in(request: HttpRequest, view: View) -> HttpResponseBase:
    if request.method != "POST":
        return view(request)
    if wait := sign_in_wait(request):
        return rate_limited(request, retry_after=wait)
    response = view(request)
    # A valid form signs in and redirects; a wrong name or password shows the form again.
    if response.status_code in (200, 302):
        note_sign_in(request, succeeded=response.status_code == 302)
    return response


def sign_in(request: HttpRequest) -> HttpResponseBase:
    """Tenant pages' sign-in, limited per address, per address and account, and per account for many addresses."""
    if request.method == "POST" and not settings.TOLLGATE_PASSWORD_LOGIN:
        return sso.password_refused(request)
    return throttled_sign_in(request, auth.LoginView.as_view(extra_context=sso.login_context()))


def admin_sign_in(request: HttpRequest) -> HttpResponseBase:
    """The admin's sign-in, under the same limits: it takes the same accounts."""
    if request.method == "POST" and not settings.TOLLGATE_PASSWORD_LOGIN:
        return sso.password_refused(request, "admin/login.html")
    return throttled_sign_in(request, lambda request: admin.site.login(request, extra_context=sso.login_context()))


@ratelimit(key="ip", rate="5/m", method="POST", block=False)
def password_reset(request: HttpRequest) -> HttpResponse:
    if not settings.TOLLGATE_PASSWORD_LOGIN:
        return sso.password_refused(request)
    if getattr(request, "limited", False):
        return rate_limited(request)
    return auth.PasswordResetView.as_view()(request)


def favicon(request: HttpRequest) -> HttpResponse:
    # Browsers ask for /favicon.ico on pages that name no icon (the API docs, a raw error page).
    return HttpResponsePermanentRedirect(static("tollgate/favicon.svg"))


async def _read_in_thread(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in await sync_to_async(list, thread_sensitive=False)(chunks):
        yield chunk


def static_file(request: HttpRequest, path: str) -> HttpResponseBase:
    """A collected static file. Under ASGI it is read in a worker thread and handed over as an async iterator:
    a file's own iterator is synchronous, which Django's ASGI handler warns about on every file it serves."""
    response = serve(request, path, document_root=settings.STATIC_ROOT)
    if isinstance(request, ASGIRequest) and response.streaming and not response.is_async:
        response.streaming_content = _read_in_thread(response.streaming_content)
    return response
