"""The OpenAI error envelope. Every /v1 failure is one of these, never an HTML page or a stack trace."""

from __future__ import annotations

import json

from django.http import JsonResponse


class GatewayError(Exception):
    status, type, code = 400, "invalid_request_error", None
    end_reason = "rejected"  # what the usage row says when this error ends a request

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param = message, param
        if code is not None:
            self.code = code

    def envelope(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def sse_event(self) -> bytes:
        return b"data: " + json.dumps(self.envelope()).encode() + b"\n\n"

    def headers(self) -> dict[str, str]:
        return {}

    def response(self) -> JsonResponse:
        return JsonResponse(self.envelope(), status=self.status, headers=self.headers())


class AuthenticationFailed(GatewayError):
    status, code = 401, "invalid_api_key"


class PermissionDenied(GatewayError):
    status, code = 403, "permission_denied"


class NotFound(GatewayError):
    status, code = 404, "not_found"


class ModelNotFound(GatewayError):
    status, code = 404, "model_not_found"


class MethodNotAllowed(GatewayError):
    status, code = 405, "method_not_allowed"

    def headers(self) -> dict[str, str]:
        return {"Allow": "POST"}


class NotAllowed(MethodNotAllowed):
    """A method the endpoint does not take, on an endpoint that takes other methods than POST."""

    def __init__(self, *methods: str) -> None:
        super().__init__(f"Use {' or '.join(methods)} for this endpoint.")
        self.methods = methods

    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.methods)}


class PayloadTooLarge(GatewayError):
    status, code = 413, "request_too_large"


class RequestTimeout(GatewayError):
    status, code = 408, "request_timeout"


class ServerError(GatewayError):
    status, type, code = 500, "server_error", "internal_error"
    end_reason = "gateway_error"


class ServiceUnavailable(GatewayError):
    """Redis or the database is down: requests that need them are refused (fail closed); a retry may work."""

    status, type, code = 503, "server_error", "service_unavailable"
    end_reason = "gateway_unavailable"

    def headers(self) -> dict[str, str]:
        return {"x-should-retry": "true", "Retry-After": "1"}


class ProviderError(GatewayError):
    """The upstream failed. ``permanent`` errors are not retried on another deployment.

    ``retry_after`` and ``retry_after_ms`` are the provider's own hints (its Retry-After and retry-after-ms headers):
    Tollgate waits for them before a retry, and passes them on to the client when it gives up.
    """

    type, end_reason = "upstream_error", "upstream_error"

    def __init__(
        self, message: str, *, status: int, code: str, permanent: bool, retry_after: str | None = None,
        end_reason: str = "upstream_error", retry_after_ms: str | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.status, self.permanent, self.retry_after, self.end_reason = status, permanent, retry_after, end_reason
        self.retry_after_ms = retry_after_ms
        if status < 500:
            self.type = "invalid_request_error" if status != 429 else "rate_limit_error"

    def headers(self) -> dict[str, str]:
        headers = {"Retry-After": self.retry_after} if self.retry_after else {}
        if self.retry_after_ms:
            headers["retry-after-ms"] = self.retry_after_ms
        return headers


class BudgetExceeded(GatewayError):
    """A hard budget has no room for the request. Retrying will not help until the period or budget changes."""

    status, type, code = 429, "insufficient_quota", "insufficient_quota"

    def headers(self) -> dict[str, str]:
        return {"x-should-retry": "false"}


class NeverFits(GatewayError):
    """The request's worst case is larger than a whole limit (a hard budget, a tokens-per-minute rate): retrying
    cannot help, so the SDKs are told not to."""

    status, type, code = 429, "insufficient_quota", "insufficient_quota"

    def headers(self) -> dict[str, str]:
        return {"x-should-retry": "false"}


class TooManyTokens(NeverFits):
    """The request may use more tokens than a whole tokens-per-minute limit (OpenAI says "Request too large")."""

    type, code = "tokens", "rate_limit_exceeded"


class RateLimited(GatewayError):
    status, type, code = 429, "requests", "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class Draining(GatewayError):
    """This process got SIGTERM and is going away (gateway_site/drain.py): another one answers a retry."""

    status, type, code = 503, "server_error", "draining"
    end_reason = "drained"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1", "x-should-retry": "true", "Connection": "close"}
