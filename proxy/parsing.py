"""Request bodies: parse and validate, so bad input is a 4xx envelope with `param` set, never a 500.

Everything the gateway itself reads later (the gate's token count, the demo model, provider translations,
the ledger row) is checked here for shape, so nothing downstream meets a type it does not expect. Fields
only forwarded to the provider are left to the provider. ``param`` is the JSON path of the bad value.
"""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest

from . import dialects
from .asgi import BODY_TIMED_OUT
from .errors import GatewayError, PayloadTooLarge, RequestTimeout
from .providers.base import CHAT, COMPLETIONS, EMBEDDINGS, ApiRequest, JSONDict

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
IMAGE_DETAILS = {"low", "high", "auto"}
TOKEN_IDS = 2**31  # token ids are below this in every tokenizer OpenAI serves
NUMBER = (int, float)


def invalid(message: str, param: str | None) -> GatewayError:
    return GatewayError(message, param=param, code="invalid_value" if param else "invalid_request")


def missing(param: str) -> GatewayError:
    return invalid(f"Missing required parameter: '{param}'.", param)


def wrong_type(param: str, expected: str) -> GatewayError:
    return GatewayError(f"Invalid type for '{param}': expected {expected}.", param=param, code="invalid_type")


def is_a(value: Any, kinds: type | tuple[type, ...]) -> bool:
    # JSON true/false are Python ints: a boolean is never accepted where a number is expected.
    return isinstance(value, kinds) and (value.__class__ is not bool or kinds is bool)


def reject_constant(name: str) -> NoReturn:
    # NaN and Infinity are not JSON; Python's decoder accepts them, and they would be sent upstream as such.
    raise ValueError(f"{name} is not valid JSON")


def finite_float(text: str) -> float:
    # 1e999 decodes to infinity, which is not JSON either.
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} is out of range")
    return value


def read_json(request: HttpRequest) -> JSONDict:
    """Return the JSON object in the request body. Raises a 400, 408 or 413 GatewayError."""
    scope = getattr(request, "scope", None)
    if scope is not None and scope.get(BODY_TIMED_OUT):
        raise RequestTimeout(f"The request body did not arrive within {settings.TOLLGATE_BODY_TIMEOUT_SECONDS} seconds.")
    limit = settings.TOLLGATE_MAX_BODY_BYTES
    declared = request.headers.get("Content-Length", "")
    # ASCII digits only: "²".isdigit() is true but int() refuses it, and so would Django reading the body.
    if declared and not (declared.isascii() and declared.isdigit()):
        raise GatewayError("The Content-Length header must be a number of bytes.", code="invalid_request")
    # More digits than any size we accept is too large, without int() (which refuses 4,300 digits and more).
    if declared and (len(declared) > 18 or int(declared) > limit):
        raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
    try:
        raw = request.body
    except RequestDataTooBig:
        raise PayloadTooLarge(f"The request body is larger than {limit} bytes.") from None
    if len(raw) > limit:
        raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
    try:
        # Strict UTF-8, as JSON on the wire is: json.loads(bytes) would also take UTF-16 and UTF-8-encoded surrogates.
        text = raw.decode("utf-8")
        data = json.loads(text[1:] if text.startswith("\ufeff") else text, parse_constant=reject_constant,
                          parse_float=finite_float)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; deep nesting raises RecursionError
        raise GatewayError("We could not parse the JSON body of your request.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise GatewayError("The request body must be a JSON object.", code="invalid_json")
    # A \ud800-style escape can leave a lone surrogate, which no UTF-8 text (the database, the provider) can hold.
    # Only bodies with such an escape pay for the walk; a valid pair (an emoji) passes it.
    # (A one-byte search first: it is memchr, about 20 times faster than looking for the three bytes in 8 MB.)
    if b"\\" in raw and (b"\\ud" in raw or b"\\uD" in raw):
        where = unencodable(data)
        if where is not None:
            raise invalid("The request body contains a lone UTF-16 surrogate, which is not valid Unicode text.", where or None)
    return data


def encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def unencodable(data: JSONDict) -> str | None:
    """Return the JSON path of a string (or of the object holding a key) that UTF-8 cannot encode, else None."""
    stack: list[tuple[dict[str, Any] | list[Any], str]] = [(data, "")]
    while stack:  # a loop, not recursion: the body may be nested as deep as the decoder allows
        container, at = stack.pop()
        items = container.items() if isinstance(container, dict) else enumerate(container)
        for key, value in items:
            if key.__class__ is str and not encodes(key):
                return at
            if isinstance(value, str):
                if not encodes(value):
                    return child(at, key)
            elif isinstance(value, (dict, list)):
                stack.append((value, child(at, key)))
    return None


def child(at: str, key: str | int) -> str:
    if key.__class__ is int:
        return f"{at}[{key}]"
    return f"{at}.{key}" if at else str(key)


def field(obj: JSONDict, name: str, kinds: type | tuple[type, ...], expected: str, at: str = "",
          *, required: bool = False) -> Any:
    """Return obj[name] if it is of the kinds (None if absent). ``at`` is obj's own path, for the error's param."""
    value = obj.get(name)
    if value is None:
        if required:
            raise missing(f"{at}.{name}" if at else name)
        return None
    if not is_a(value, kinds):
        raise wrong_type(f"{at}.{name}" if at else name, expected)
    return value


def positive_int(data: JSONDict, name: str, most: int) -> int | None:
    value = field(data, name, int, "an integer")
    if value is not None and not 1 <= value <= most:
        raise invalid(f"'{name}' must be between 1 and {most}.", name)
    return value


def number_between(data: JSONDict, name: str, low: float, high: float) -> None:
    value = field(data, name, NUMBER, "a number")
    if value is not None and not low <= value <= high:
        raise invalid(f"'{name}' must be between {low:g} and {high:g}.", name)


def check_parts(parts: list[Any], at: str) -> None:
    for j, part in enumerate(parts):
        # The common case first and cheaply: a text part whose text is a string.
        if part.__class__ is dict and part.get("type") == "text" and part.get("text").__class__ is str:
            continue
        check_part(part, f"{at}[{j}]")


def check_part(part: Any, here: str) -> None:
    if not isinstance(part, dict):
        raise wrong_type(here, "an object")
    kind = field(part, "type", str, "a string", here, required=True)
    if kind == "text":
        field(part, "text", str, "a string", here, required=True)
    elif kind == "image_url":
        # OpenAI takes only an object here; a bare URL string is refused rather than guessed at.
        image = field(part, "image_url", dict, "an object", here, required=True)
        field(image, "url", str, "a string", f"{here}.image_url", required=True)
        if field(image, "detail", str, "a string", f"{here}.image_url") not in (None, *IMAGE_DETAILS):
            raise invalid(f"{here}.image_url.detail must be one of auto, high, low.", f"{here}.image_url.detail")
    elif kind == "input_audio":
        field(part, "input_audio", dict, "an object", here, required=True)
    # Other part types (file, refusal, newer ones) are forwarded as they are.


def check_function(function: JSONDict, at: str) -> None:
    field(function, "name", str, "a string", at, required=True)
    field(function, "parameters", dict, "an object", at)


def check_tool_calls(calls: list[Any], at: str) -> None:
    for j, call in enumerate(calls):
        here = f"{at}[{j}]"
        if not isinstance(call, dict):
            raise wrong_type(here, "an object")
        if field(call, "type", str, "a string", here) in (None, "function"):
            function = field(call, "function", dict, "an object", here, required=True)
            field(function, "name", str, "a string", f"{here}.function", required=True)
            field(function, "arguments", str, "a string", f"{here}.function", required=True)


def check_messages(messages: list[Any]) -> None:
    if not messages:
        raise invalid("'messages' must contain at least one message.", "messages")
    for i, message in enumerate(messages):
        # The common case first and cheaply: a known role and string content, nothing else to check.
        if (message.__class__ is dict and message.get("content").__class__ is str and "tool_calls" not in message
                and "function_call" not in message and (role := message.get("role")).__class__ is str and role in ROLES):
            continue
        check_message(message, f"messages[{i}]")


def check_message(message: Any, at: str) -> None:
    if not isinstance(message, dict):
        raise wrong_type(at, "an object")
    if field(message, "role", str, "a string", at, required=True) not in ROLES:
        raise invalid(f"{at}.role must be one of {', '.join(sorted(ROLES))}.", f"{at}.role")
    tool_calls = field(message, "tool_calls", list, "an array", at)
    function_call = field(message, "function_call", dict, "an object", at)
    content = message.get("content")
    if isinstance(content, list):
        check_parts(content, f"{at}.content")
    elif content is None and not (tool_calls or function_call):
        raise missing(f"{at}.content")
    elif content is not None and not isinstance(content, str):
        raise wrong_type(f"{at}.content", "a string or an array of content parts")
    if tool_calls:
        check_tool_calls(tool_calls, f"{at}.tool_calls")
    if function_call:
        field(function_call, "name", str, "a string", f"{at}.function_call", required=True)
        field(function_call, "arguments", str, "a string", f"{at}.function_call", required=True)


def check_tools(data: JSONDict) -> None:
    for i, tool in enumerate(field(data, "tools", list, "an array") or ()):
        at = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise wrong_type(at, "an object")
        kind = field(tool, "type", str, "a string", at, required=True)
        function = field(tool, "function", dict, "an object", at, required=kind == "function")
        if function is not None:
            check_function(function, f"{at}.function")
    for i, function in enumerate(field(data, "functions", list, "an array") or ()):
        if not isinstance(function, dict):
            raise wrong_type(f"functions[{i}]", "an object")
        check_function(function, f"functions[{i}]")


def check_chat_options(data: JSONDict) -> None:
    check_tools(data)
    response_format = field(data, "response_format", dict, "an object")
    if response_format is not None:
        if field(response_format, "type", str, "a string", "response_format", required=True) == "json_schema":
            field(response_format, "json_schema", dict, "an object", "response_format", required=True)


def check_stop(data: JSONDict) -> None:
    stop = data.get("stop")
    if stop is None or isinstance(stop, str):
        return
    if not isinstance(stop, list):
        raise wrong_type("stop", "a string or an array of strings")
    for i, item in enumerate(stop):
        if not isinstance(item, str):
            raise wrong_type(f"stop[{i}]", "a string")


def is_token_id(value: Any) -> bool:
    return value.__class__ is int and 0 <= value < TOKEN_IDS


def check_token_ids(tokens: list[Any], at: str) -> None:
    for i, token in enumerate(tokens):
        if not is_token_id(token):
            if token.__class__ is not int:
                raise wrong_type(f"{at}[{i}]", "a token id (an integer)")
            raise invalid(f"{at}[{i}] must be a token id between 0 and {TOKEN_IDS - 1}.", f"{at}[{i}]")


def check_text_input(data: JSONDict, name: str) -> None:
    """A string, or a non-empty array of strings, of token ids, or of non-empty arrays of token ids (not mixed)."""
    value = data.get(name)
    if value is None:
        raise missing(name)
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise wrong_type(name, "a string or an array")
    if not value:
        raise invalid(f"'{name}' must not be empty.", name)
    first = value[0]
    if isinstance(first, str):
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise wrong_type(f"{name}[{i}]", "a string, as the first item is")
    elif first.__class__ is int:
        check_token_ids(value, name)
    elif isinstance(first, list):
        for i, item in enumerate(value):
            if not isinstance(item, list):
                raise wrong_type(f"{name}[{i}]", "an array of token ids, as the first item is")
            if not item:
                raise invalid(f"{name}[{i}] must not be empty.", f"{name}[{i}]")
            check_token_ids(item, f"{name}[{i}]")
    else:
        raise wrong_type(f"{name}[0]", "a string, a token id or an array of token ids")


def check_model(data: JSONDict) -> str:
    model: str = field(data, "model", str, "a string", required=True)
    if not model.strip():
        raise invalid("'model' must not be empty.", "model")
    if "\x00" in model:
        # The model name is kept on the ledger row, and PostgreSQL text cannot hold NUL: the row would be lost.
        raise invalid("'model' must not contain NUL characters.", "model")
    return model


def check_completion_tokens(data: JSONDict, endpoint: str) -> int | None:
    """Return the completion tokens asked for per choice, at most TOLLGATE_MAX_COMPLETION_TOKENS in all choices."""
    most = settings.TOLLGATE_MAX_COMPLETION_TOKENS
    max_completion_tokens, max_tokens = positive_int(data, "max_completion_tokens", most), positive_int(data, "max_tokens", most)
    n = positive_int(data, "n", 16) or 1
    best_of = positive_int(data, "best_of", 20) if endpoint == COMPLETIONS else None
    if best_of is not None and best_of < n:
        raise invalid("'best_of' must be at least 'n'.", "best_of")
    asked = max_completion_tokens or max_tokens
    if asked is not None and asked * max(n, best_of or 1) > most:
        name = "max_completion_tokens" if max_completion_tokens else "max_tokens"
        raise invalid(f"'{name}' times the number of choices ('n', 'best_of') must be at most {most}.", name)
    return asked


def parse(request: HttpRequest, endpoint: str) -> ApiRequest:
    """Return the validated body of a /v1 request. Raises a 4xx GatewayError naming the bad parameter."""
    return parse_data(read_json(request), endpoint)


def parse_data(data: JSONDict, endpoint: str) -> ApiRequest:
    """Return the validated body from already decoded JSON (a batch line's body). Raises a 4xx GatewayError."""
    if endpoint in dialects.DIALECTS:
        return dialects.get_dialect(endpoint).parse(data)
    model = check_model(data)
    if endpoint == CHAT:
        check_messages(field(data, "messages", list, "an array", required=True))
        check_chat_options(data)
    elif endpoint == COMPLETIONS:
        check_text_input(data, "prompt")
    elif endpoint == EMBEDDINGS:
        check_text_input(data, "input")
    stream = bool(field(data, "stream", bool, "a boolean")) if endpoint != EMBEDDINGS else False
    options = field(data, "stream_options", dict, "an object") or {}
    include_usage = field(options, "include_usage", bool, "a boolean", "stream_options") or False
    if options and not stream:
        raise invalid("'stream_options' is only allowed when 'stream' is true.", "stream_options")
    max_tokens = check_completion_tokens(data, endpoint)
    number_between(data, "temperature", 0, 2)
    number_between(data, "top_p", 0, 1)
    check_stop(data)
    return ApiRequest(endpoint=endpoint, model=model, data=data, stream=stream, include_usage=include_usage, max_tokens=max_tokens)
