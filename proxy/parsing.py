"""Request bodies: parse and validate, so bad input is a 4xx envelope with `param` set, never a 500."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest

from .errors import GatewayError, PayloadTooLarge
from .providers.base import CHAT, COMPLETIONS, EMBEDDINGS, ApiRequest, JSONDict

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


def invalid(message: str, param: str | None) -> GatewayError:
    return GatewayError(message, param=param, code="invalid_value" if param else "invalid_request")


def read_json(request: HttpRequest) -> JSONDict:
    """Return the JSON object in the request body. Raises a 400 or 413 GatewayError."""
    limit = settings.TOLLGATE_MAX_BODY_BYTES
    declared = request.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
    try:
        raw = request.body
    except RequestDataTooBig:
        raise PayloadTooLarge(f"The request body is larger than {limit} bytes.") from None
    if len(raw) > limit:
        raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise GatewayError("We could not parse the JSON body of your request.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise GatewayError("The request body must be a JSON object.", code="invalid_json")
    return data


def expect(data: JSONDict, name: str, kinds: type | tuple[type, ...], *, required: bool = False) -> Any:
    value = data.get(name)
    if value is None:
        if required:
            raise invalid(f"Missing required parameter: '{name}'.", name)
        return None
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise invalid(f"Invalid type for '{name}'.", name)
    if not isinstance(value, kinds):
        raise invalid(f"Invalid type for '{name}'.", name)
    return value


def positive_int(data: JSONDict, name: str) -> int | None:
    value = expect(data, name, int)
    if value is not None and value < 1:
        raise invalid(f"'{name}' must be at least 1.", name)
    return value


def check_messages(messages: list[Any]) -> None:
    if not messages:
        raise invalid("'messages' must contain at least one message.", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid(f"messages[{i}] must be an object.", f"messages[{i}]")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise invalid(f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}.", f"messages[{i}].role")
        content = message.get("content")
        if content is None and not (message.get("tool_calls") or message.get("function_call")):
            raise invalid(f"messages[{i}].content is required.", f"messages[{i}].content")
        if content is not None and not isinstance(content, (str, list)):
            raise invalid(f"messages[{i}].content must be a string or a list of parts.", f"messages[{i}].content")


def check_text_input(data: JSONDict, name: str) -> None:
    value = data.get(name)
    ok = isinstance(value, str) or (
        isinstance(value, list) and value and all(isinstance(v, (str, int)) or isinstance(v, list) for v in value)
    )
    if value is None:
        raise invalid(f"Missing required parameter: '{name}'.", name)
    if not ok:
        raise invalid(f"'{name}' must be a string or a non-empty list.", name)


def parse(request: HttpRequest, endpoint: str) -> ApiRequest:
    """Return the validated body of a /v1 request. Raises a 4xx GatewayError naming the bad parameter."""
    data = read_json(request)
    model = expect(data, "model", str, required=True)
    if not model.strip():
        raise invalid("'model' must not be empty.", "model")
    if endpoint == CHAT:
        check_messages(expect(data, "messages", list, required=True))
    elif endpoint == COMPLETIONS:
        check_text_input(data, "prompt")
    elif endpoint == EMBEDDINGS:
        check_text_input(data, "input")
    stream = bool(expect(data, "stream", bool)) if endpoint != EMBEDDINGS else False
    options = expect(data, "stream_options", dict) or {}
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise invalid("'stream_options.include_usage' must be a boolean.", "stream_options.include_usage")
    if options and not stream:
        raise invalid("'stream_options' is only allowed when 'stream' is true.", "stream_options")
    max_completion_tokens, max_tokens = positive_int(data, "max_completion_tokens"), positive_int(data, "max_tokens")
    max_tokens = max_completion_tokens or max_tokens
    n = positive_int(data, "n")
    if n is not None and n > 16:
        raise invalid("'n' must be at most 16.", "n")
    temperature = expect(data, "temperature", (int, float))
    if temperature is not None and not 0 <= temperature <= 2:
        raise invalid("'temperature' must be between 0 and 2.", "temperature")
    return ApiRequest(endpoint=endpoint, model=model, data=data, stream=stream, include_usage=include_usage, max_tokens=max_tokens)
