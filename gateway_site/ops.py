"""Who may read the operators' endpoints (/metrics, /health/detailed): a staff session or the ops bearer token."""

from __future__ import annotations

import hmac
from typing import Any

from django.conf import settings


def token_matches(authorization: str | bytes | None) -> bool:
    """True when the Authorization header is ``Bearer <TOLLGATE_OPS_TOKEN>``; always False when no token is set."""
    expected = settings.TOLLGATE_OPS_TOKEN
    if not expected or not authorization:
        return False
    if isinstance(authorization, bytes):
        authorization = authorization.decode("latin-1")
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), expected.encode())


def is_operator(request: Any) -> bool:
    """A signed-in staff user, or a caller with the ops token (the request may be an HttpRequest or carry headers)."""
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated and user.is_staff:
        return True
    return token_matches(request.headers.get("Authorization"))
