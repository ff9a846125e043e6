"""The OpenAI error envelope. Every /v1 failure is one of these, never an HTML page or a stack trace."""

from __future__ import annotations

from django.http import JsonResponse


class GatewayError(Exception):
    status, type, code = 400, "invalid_request_error", None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param = message, param
        if code is not None:
            self.code = code

    def envelope(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

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


class MethodNotAllowed(GatewayError):
    status, code = 405, "method_not_allowed"


class ServerError(GatewayError):
    status, type, code = 500, "server_error", "internal_error"
