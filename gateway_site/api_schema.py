"""The management API's OpenAPI schema: drf-spectacular's plus the errors each operation can answer (DRF's envelope)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.plumbing import ResolvedComponent
from rest_framework import serializers

WRITES = ("POST", "PUT", "PATCH")

DETAIL_SCHEMA = {
    "type": "object",
    "properties": {"detail": {"type": "string"}},
    "required": ["detail"],
    "description": "DRF's error envelope: one message for the whole request.",
}
FIELD_ERRORS_SCHEMA = {
    "type": "object",
    "additionalProperties": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}},
                                       {"type": "object"}]},
    "description": "DRF's validation envelope: each field with its messages; `non_field_errors` or `detail` for "
                   "the request as a whole (`detail` is one string when the body is not valid JSON).",
}
RETRY_AFTER = {
    "Retry-After": {"schema": {"type": "integer", "minimum": 1},
                    "description": "Seconds until the caller's rate limit window ends."},
}
WWW_AUTHENTICATE = {
    "WWW-Authenticate": {"schema": {"type": "string"}, "description": "How to authenticate: a management token."},
}


class AutoSchema(SpectacularAutoSchema):
    def _map_serializer_field(self, field: Any, direction: Any, bypass_extensions: bool = False) -> dict[str, Any]:
        schema: dict[str, Any] = super()._map_serializer_field(field, direction, bypass_extensions)
        if isinstance(field, serializers.DecimalField) and "pattern" in schema and field.max_whole_digits:
            # drf-spectacular's pattern takes "", "." and "-" (no digit) and a sign where min_value forbids one.
            sign = "" if field.min_value is not None and field.min_value >= 0 else "-?"
            whole, places = field.max_whole_digits, field.decimal_places
            schema["pattern"] = rf"^{sign}(?:\d{{1,{whole}}}(?:\.\d{{0,{places}}})?|\.\d{{1,{places}}})$"
        return schema

    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses: dict[str, Any] = super()._get_response_bodies(direction)
        for code, description in self.error_codes().items():
            documented = responses.setdefault(code, {"description": description})
            documented.setdefault("content", {"application/json": {"schema": self.error_schema(code)}})
            if code == "429":
                documented.setdefault("headers", RETRY_AFTER)
            elif code == "401":
                documented.setdefault("headers", WWW_AUTHENTICATE)
        return responses

    def error_codes(self) -> dict[str, str]:
        """Each status this operation can answer with an error, and why."""
        codes = {
            "401": "No credentials, or a management token that is invalid or revoked.",
            "403": "Not allowed: a tenant owner on an operator's endpoint or object, a member who is not an owner, "
                   "or a session without its CSRF token.",
            "429": "Too many requests (TOLLGATE_API_RATE); Retry-After tells when to come back.",
        }
        if "{" in self.path:
            codes["404"] = "No such object among those the caller may see."
        if self.method in WRITES:
            codes["400"] = "Invalid fields, or a body that is not JSON the database can store."
            codes["415"] = "The body is not application/json."
        if self.method in WRITES or self.method == "DELETE":
            codes["409"] = "Conflicts with the stored data: still referenced by other records, or a unique value taken."
        return dict(sorted(codes.items()))

    def error_schema(self, code: str) -> dict[str, str]:
        name, schema = ("ValidationErrors", FIELD_ERRORS_SCHEMA) if code == "400" else ("ErrorDetail", DETAIL_SCHEMA)
        component = ResolvedComponent(name=name, type=ResolvedComponent.SCHEMA, schema=schema, object=name)
        self.registry.register_on_missing(component)
        return component.ref
