"""How the management API knows its caller; kept apart from the viewsets, which DRF's settings would otherwise
import while they are being defined. Its rate limit is gateway_site/api_limits.py."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from . import services


class ManagementTokenAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer tgm-…``: a management token, never a /v1 key."""

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header.startswith("Bearer tgm-"):
            return None
        found = services.management_token_user(header.removeprefix("Bearer ").strip())
        if found is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked management token.")
        return found

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="tollgate-api"'


class ManagementTokenScheme(OpenApiAuthenticationExtension):
    """How the OpenAPI schema describes the management token."""

    target_class = "accounts.api_auth.ManagementTokenAuthentication"
    name = "managementToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer",
                "description": "A management token (tgm-…) from `manage.py issuetoken USER`; not a /v1 key."}
