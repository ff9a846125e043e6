"""Single sign-on with OpenID Connect, on mozilla-django-oidc: discovery, the sign-in views and the user backend.

The provider's endpoints come from its discovery document, fetched once on first use and kept for the process.
Each sign-in applies the group mapping of settings (staff, superuser, tenant memberships): see ``sync_access``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import httpx
import jwt
import requests
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ImproperlyConfigured, SuspiciousOperation
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from .sso_access import sync_access

logger = logging.getLogger(__name__)

ENDPOINTS = ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri")
# mozilla-django-oidc's names for what our settings and the discovery document hold.
_FROM_SETTINGS = {
    "OIDC_RP_CLIENT_ID": "TOLLGATE_OIDC_CLIENT_ID", "OIDC_RP_CLIENT_SECRET": "TOLLGATE_OIDC_CLIENT_SECRET",
    "OIDC_RP_SCOPES": "TOLLGATE_OIDC_SCOPES", "OIDC_RP_SIGN_ALGO": "TOLLGATE_OIDC_SIGN_ALGO",
}
_FROM_DISCOVERY = {
    "OIDC_OP_AUTHORIZATION_ENDPOINT": "authorization_endpoint", "OIDC_OP_TOKEN_ENDPOINT": "token_endpoint",
    "OIDC_OP_USER_ENDPOINT": "userinfo_endpoint", "OIDC_OP_JWKS_ENDPOINT": "jwks_uri",
}

_discovered: dict[str, dict[str, str]] = {}
_lock = threading.Lock()


class ProviderUnavailable(Exception):
    """The issuer's discovery document could not be fetched (the provider is down or unreachable)."""


def enabled() -> bool:
    return bool(settings.TOLLGATE_OIDC_ISSUER)


def discovery() -> dict[str, str]:
    """The issuer's endpoints, fetched once. Raises ProviderUnavailable, or ImproperlyConfigured for a wrong issuer."""
    issuer = settings.TOLLGATE_OIDC_ISSUER
    if found := _discovered.get(issuer):
        return found
    with _lock:
        if issuer not in _discovered:
            _discovered[issuer] = _fetch_discovery(issuer)
    return _discovered[issuer]


def _fetch_discovery(issuer: str) -> dict[str, str]:
    url = f"{issuer}/.well-known/openid-configuration"
    try:
        response = httpx.get(url, timeout=settings.OIDC_TIMEOUT)
        response.raise_for_status()
        document = response.json()
    except (httpx.HTTPError, ValueError) as e:
        raise ProviderUnavailable(f"{url}: {type(e).__name__}") from None
    if not isinstance(document, dict) or str(document.get("issuer", "")).rstrip("/") != issuer:
        found = document.get("issuer") if isinstance(document, dict) else None
        raise ImproperlyConfigured(f"TOLLGATE_OIDC_ISSUER is {issuer!r} but its discovery document names {found!r}")
    missing = [name for name in ENDPOINTS if not isinstance(document.get(name), str)]
    if missing:
        raise ImproperlyConfigured(f"The discovery document of {issuer} lacks {', '.join(missing)}")
    return {name: document[name] for name in ENDPOINTS}


def forget_discovery() -> None:
    _discovered.clear()


@receiver(setting_changed)
def _issuer_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "TOLLGATE_OIDC_ISSUER":
        forget_discovery()


def setting(name: str, *default: Any) -> Any:
    """A mozilla-django-oidc setting, answered from Tollgate's settings and the discovery document."""
    if name in _FROM_SETTINGS:
        return getattr(settings, _FROM_SETTINGS[name])
    if name in _FROM_DISCOVERY:
        return discovery()[_FROM_DISCOVERY[name]]
    if name == "LOGIN_REDIRECT_URL_FAILURE":
        return reverse("login")
    return getattr(settings, name, *default)


def login_context() -> dict[str, Any]:
    """What the sign-in pages (tenant pages and admin) show: the SSO button and whether the password form is on."""
    return {"sso_name": settings.TOLLGATE_OIDC_PROVIDER_NAME if enabled() else "",
            "password_off": not settings.TOLLGATE_PASSWORD_LOGIN}


def password_refused(request: HttpRequest, template: str = "registration/login.html") -> HttpResponse:
    """The sign-in page again, with a 403: passwords are turned off, only single sign-on signs in."""
    context = {**login_context(), "refused": True, "next": request.POST.get("next") or request.GET.get("next", "")}
    if template.startswith("admin/"):
        context = {**admin.site.each_context(request), "title": "Log in", **context}
    return render(request, template, context, status=403)


class Authenticate(OIDCAuthenticationRequestView):
    """Sends the browser to the provider's sign-in page (with state, nonce and the safe ?next= in the session)."""

    def __init__(self, **kwargs: Any) -> None:
        # The parent reads the endpoint here; we read it in get(), where an unreachable provider can be answered.
        super(OIDCAuthenticationRequestView, self).__init__(**kwargs)

    get_settings = staticmethod(setting)

    def get(self, request: HttpRequest) -> HttpResponseBase:
        if not enabled():
            raise Http404("Single sign-on is not configured")
        try:
            self.OIDC_OP_AUTH_ENDPOINT = setting("OIDC_OP_AUTHORIZATION_ENDPOINT")
            self.OIDC_RP_CLIENT_ID = setting("OIDC_RP_CLIENT_ID")
        except ProviderUnavailable as e:
            logger.warning("single sign-on provider unavailable: %s", e)
            return render(request, "registration/sso_unavailable.html", login_context(), status=503)
        except ImproperlyConfigured as e:  # the discovery document does not fit the settings: the operator's to fix
            logger.error("single sign-on misconfigured: %s", e)
            return render(request, "registration/sso_unavailable.html", login_context(), status=503)
        return super().get(request)


class Callback(OIDCAuthenticationCallbackView):
    """The provider sends the browser back here; a refused or failed sign-in goes back to the sign-in page."""

    get_settings = staticmethod(setting)

    def get(self, request: HttpRequest) -> HttpResponseBase:
        if not enabled():
            raise Http404("Single sign-on is not configured")
        try:
            return super().get(request)
        except (SuspiciousOperation, jwt.PyJWTError) as e:  # an unknown state, a bad token, signature or nonce
            logger.warning("single sign-on refused: %s", e)
        except (requests.RequestException, ProviderUnavailable) as e:
            # Only the exception's class: a token endpoint's error text is the provider's, not ours to log.
            logger.warning("single sign-on failed talking to the provider: %s", type(e).__name__)
        except ImproperlyConfigured as e:
            logger.error("single sign-on misconfigured: %s", e)
        return self.login_failure()

    def login_failure(self) -> HttpResponseRedirect:
        messages.error(self.request, "Single sign-on did not complete. Please try again.")
        return super().login_failure()


class Backend(OIDCAuthenticationBackend):
    """Signs in the provider's user: found by email (created when new), then given the access its groups map to."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Django builds backends on every authenticate(): nothing here may fetch the discovery document.
        self.UserModel = get_user_model()

    get_settings = staticmethod(setting)

    @property
    def OIDC_OP_TOKEN_ENDPOINT(self) -> str:  # noqa: N802 (the parent's names)
        return str(setting("OIDC_OP_TOKEN_ENDPOINT"))

    @property
    def OIDC_OP_USER_ENDPOINT(self) -> str:  # noqa: N802
        return str(setting("OIDC_OP_USER_ENDPOINT"))

    @property
    def OIDC_OP_JWKS_ENDPOINT(self) -> str:  # noqa: N802
        return str(setting("OIDC_OP_JWKS_ENDPOINT"))

    @property
    def OIDC_RP_CLIENT_ID(self) -> str:  # noqa: N802
        return str(settings.TOLLGATE_OIDC_CLIENT_ID)

    @property
    def OIDC_RP_CLIENT_SECRET(self) -> str:  # noqa: N802
        return str(settings.TOLLGATE_OIDC_CLIENT_SECRET)

    @property
    def OIDC_RP_SIGN_ALGO(self) -> str:  # noqa: N802
        return str(settings.TOLLGATE_OIDC_SIGN_ALGO)

    OIDC_RP_IDP_SIGN_KEY = None

    def authenticate(self, request: HttpRequest | None, **kwargs: Any) -> AbstractBaseUser | None:
        # Only the callback view passes a nonce; a username and password are never ours to check.
        if not enabled() or "nonce" not in kwargs or "password" in kwargs:
            return None
        return super().authenticate(request, **kwargs)  # type: ignore[no-any-return]

    def verify_token(self, token: str, **kwargs: Any) -> dict[str, Any]:
        payload: dict[str, Any] = super().verify_token(token, **kwargs)
        # The library leaves issuer and audience unchecked: a token for another client must not sign in here.
        audience = payload.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if str(payload.get("iss", "")).rstrip("/") != settings.TOLLGATE_OIDC_ISSUER:
            raise SuspiciousOperation("ID token from another issuer")
        if settings.TOLLGATE_OIDC_CLIENT_ID not in audiences:
            raise SuspiciousOperation("ID token for another client")
        return payload

    def retrieve_matching_jwk(self, token: str) -> jwt.PyJWK:
        # The library insists on a "kid" header; providers with one signing key may leave it out.
        header = jwt.get_unverified_header(token)
        try:
            response = httpx.get(self.OIDC_OP_JWKS_ENDPOINT, timeout=settings.OIDC_TIMEOUT)
            response.raise_for_status()
            found = response.json().get("keys")
        except (httpx.HTTPError, ValueError, AttributeError) as e:
            raise ProviderUnavailable(f"{self.OIDC_OP_JWKS_ENDPOINT}: {type(e).__name__}") from None
        keys = [key for key in found if isinstance(key, dict) and key.get("use", "sig") == "sig"
                and key.get("alg", header.get("alg")) == header.get("alg")] if isinstance(found, list) else []
        if "kid" in header:
            keys = [key for key in keys if key.get("kid") == header["kid"]]
        if len(keys) != 1:
            raise SuspiciousOperation("No single key of the provider's JWKS matches the ID token")
        return jwt.PyJWK(keys[0])

    def get_userinfo(self, access_token: str, id_token: str, payload: dict[str, Any]) -> dict[str, Any]:
        # Groups often come only in the ID token: take its claims, and the userinfo endpoint's over them.
        return {**payload, **super().get_userinfo(access_token, id_token, payload)}

    def verify_claims(self, claims: dict[str, Any]) -> bool:
        # The email links the provider's user to ours, so one the provider says it has not verified is refused.
        return bool(claims.get("email")) and claims.get("email_verified") is not False

    def create_user(self, claims: dict[str, Any]) -> AbstractBaseUser:
        email = str(claims["email"]).strip()
        taken = self.UserModel.objects.filter(username__iexact=email[:150]).exists()
        username = f"{email[:140]}-{claims.get('sub', '')!s:.8}" if taken else email[:150]
        user = self.UserModel.objects.create_user(username, email=email)
        user.set_unusable_password()  # single sign-on users have no password until they set one by reset
        user.save(update_fields=["password"])
        return self.update_user(user, claims)

    def update_user(self, user: AbstractBaseUser, claims: dict[str, Any]) -> AbstractBaseUser:
        sync_access(user, groups_from(claims))
        return user


def groups_from(claims: dict[str, Any]) -> set[str]:
    """The provider's groups: the claim named in settings (a dotted path reaches into objects), a list or a string."""
    value: Any = claims
    for part in settings.TOLLGATE_OIDC_GROUPS_CLAIM.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, str):
        return {value}
    if isinstance(value, list):
        return {item for item in value if isinstance(item, str)}
    return set()

