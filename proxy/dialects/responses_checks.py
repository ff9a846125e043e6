"""Validation of a Responses API request body (https://platform.openai.com/docs/api-reference/responses/create).

Everything Tollgate reads (to translate, size, store or bill the request) is checked for shape here, so bad input is
a 400 naming its JSON path, never a 500 further on. Item and tool types Tollgate does not translate are only checked
to be objects with a ``type``: a provider that speaks Responses gets them as they are, and a translated route refuses
them by name (responses_items.to_chat).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from ..errors import GatewayError
from ..parsing import check_model, field, invalid, missing, number_between, positive_int, wrong_type
from ..providers.base import RESPONSES, ApiRequest, JSONDict

MESSAGE_ROLES = {"user", "assistant", "system", "developer"}
TOOL_CHOICES = {"none", "auto", "required"}
FORMATS = {"text", "json_object", "json_schema"}
IMAGE_DETAILS = {"low", "high", "auto"}
METADATA_PAIRS, METADATA_KEY, METADATA_VALUE = 16, 64, 512


def check_body(data: JSONDict) -> ApiRequest:
    """Return the validated request. Raises a 4xx GatewayError naming the bad parameter."""
    model = check_model(data)
    if data.get("conversation") is not None:
        raise invalid("'conversation' is not supported by Tollgate; continue a conversation with "
                      "'previous_response_id'.", "conversation")
    check_input(data)
    field(data, "instructions", str, "a string")
    check_tools(data)
    check_tool_choice(data.get("tool_choice"))
    max_tokens = positive_int(data, "max_output_tokens", settings.TOLLGATE_MAX_COMPLETION_TOKENS)
    number_between(data, "temperature", 0, 2)
    number_between(data, "top_p", 0, 1)
    check_text(data)
    previous = field(data, "previous_response_id", str, "a string")
    if previous is not None and (not previous or "\x00" in previous or len(previous) > 128):
        raise invalid("'previous_response_id' must be the id of an earlier response.", "previous_response_id")
    stream = bool(field(data, "stream", bool, "a boolean"))
    for name in ("store", "background", "parallel_tool_calls"):
        field(data, name, bool, "a boolean")
    check_metadata(data)
    field(data, "user", str, "a string")
    reasoning = field(data, "reasoning", dict, "an object")
    if reasoning is not None:  # echoed in the Response as given
        field(reasoning, "effort", str, "a string", "reasoning")
        field(reasoning, "summary", str, "a string", "reasoning")
    if field(data, "truncation", str, "a string") not in (None, "auto", "disabled"):
        raise invalid("'truncation' must be auto or disabled.", "truncation")
    field(data, "stream_options", dict, "an object")
    field(data, "include", list, "an array")
    field(data, "max_tool_calls", int, "an integer")
    return ApiRequest(endpoint=RESPONSES, model=model, data=data, stream=stream, max_tokens=max_tokens)


def check_input(data: JSONDict) -> None:
    value = data.get("input")
    if value is None:
        raise missing("input")
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise wrong_type("input", "a string or an array of input items")
    if not value:
        raise invalid("'input' must not be empty.", "input")
    for i, item in enumerate(value):
        check_item(item, f"input[{i}]")


def check_item(item: Any, at: str) -> None:
    if not isinstance(item, dict):
        raise wrong_type(at, "an object")
    kind = field(item, "type", str, "a string", at)
    if kind == "" or (kind is None and "role" not in item):  # an empty type would be read as a message
        raise missing(f"{at}.type")
    if kind in (None, "message"):
        check_message(item, at)
    elif kind == "function_call":
        for name in ("call_id", "name", "arguments"):
            field(item, name, str, "a string", at, required=True)
    elif kind == "function_call_output":
        field(item, "call_id", str, "a string", at, required=True)
        output = item.get("output")
        if output is None:
            raise missing(f"{at}.output")
        if isinstance(output, list):
            check_parts(output, f"{at}.output")
        elif not isinstance(output, str):
            raise wrong_type(f"{at}.output", "a string or an array of content parts")
    elif kind == "reasoning":
        field(item, "summary", list, "an array", at)
    elif kind == "item_reference":
        field(item, "id", str, "a string", at, required=True)
    # Other item types (built-in tool calls and their outputs) go to providers that speak Responses as they are.


def check_message(item: JSONDict, at: str) -> None:
    if field(item, "role", str, "a string", at, required=True) not in MESSAGE_ROLES:
        raise invalid(f"{at}.role must be one of {', '.join(sorted(MESSAGE_ROLES))}.", f"{at}.role")
    content = item.get("content")
    if content is None:
        raise missing(f"{at}.content")
    if isinstance(content, list):
        check_parts(content, f"{at}.content")
    elif not isinstance(content, str):
        raise wrong_type(f"{at}.content", "a string or an array of content parts")


def check_parts(parts: list[Any], at: str) -> None:
    for j, part in enumerate(parts):
        here = f"{at}[{j}]"
        if not isinstance(part, dict):
            raise wrong_type(here, "an object")
        kind = field(part, "type", str, "a string", here, required=True)
        if kind in ("input_text", "output_text"):
            field(part, "text", str, "a string", here, required=True)
        elif kind == "refusal":
            field(part, "refusal", str, "a string", here, required=True)
        elif kind == "input_image":
            url, file_id = field(part, "image_url", str, "a string", here), field(part, "file_id", str, "a string", here)
            if url is None and file_id is None:
                raise missing(f"{here}.image_url")
            if field(part, "detail", str, "a string", here) not in (None, *IMAGE_DETAILS):
                raise invalid(f"{here}.detail must be one of auto, high, low.", f"{here}.detail")
        # Other part types (input_file, input_audio, newer ones) are forwarded natively and refused on translation.


def check_tools(data: JSONDict) -> None:
    for i, tool in enumerate(field(data, "tools", list, "an array") or ()):
        at = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise wrong_type(at, "an object")
        if field(tool, "type", str, "a string", at, required=True) == "function":
            # Responses function tools are flat: no nested "function" object as in Chat Completions.
            field(tool, "name", str, "a string", at, required=True)
            field(tool, "description", str, "a string", at)
            field(tool, "parameters", dict, "an object", at)
            field(tool, "strict", bool, "a boolean", at)


def check_tool_choice(choice: Any) -> None:
    if choice is None:
        return
    if isinstance(choice, str):
        if choice not in TOOL_CHOICES:
            raise invalid("'tool_choice' must be none, auto, required or an object.", "tool_choice")
        return
    if not isinstance(choice, dict):
        raise wrong_type("tool_choice", "a string or an object")
    kind = field(choice, "type", str, "a string", "tool_choice", required=True)
    if kind == "function":
        field(choice, "name", str, "a string", "tool_choice", required=True)
    elif kind == "allowed_tools":
        if field(choice, "mode", str, "a string", "tool_choice", required=True) not in ("auto", "required"):
            raise invalid("tool_choice.mode must be auto or required.", "tool_choice.mode")
        for j, tool in enumerate(field(choice, "tools", list, "an array", "tool_choice", required=True)):
            if not isinstance(tool, dict):
                raise wrong_type(f"tool_choice.tools[{j}]", "an object")
            field(tool, "type", str, "a string", f"tool_choice.tools[{j}]", required=True)


def check_text(data: JSONDict) -> None:
    text = field(data, "text", dict, "an object")
    if text is None:
        return
    format_ = field(text, "format", dict, "an object", "text")
    if format_ is None:
        return
    kind = field(format_, "type", str, "a string", "text.format", required=True)
    if kind not in FORMATS:
        raise invalid("text.format.type must be text, json_object or json_schema.", "text.format.type")
    if kind == "json_schema":
        field(format_, "name", str, "a string", "text.format", required=True)
        field(format_, "schema", dict, "an object", "text.format", required=True)
        field(format_, "strict", bool, "a boolean", "text.format")


def check_metadata(data: JSONDict) -> None:
    metadata = field(data, "metadata", dict, "an object")
    if metadata is None:
        return
    if len(metadata) > METADATA_PAIRS:
        raise invalid(f"'metadata' may hold at most {METADATA_PAIRS} pairs.", "metadata")
    for key, value in metadata.items():
        if len(key) > METADATA_KEY:
            raise invalid(f"metadata keys must be at most {METADATA_KEY} characters.", "metadata")
        if not isinstance(value, str):
            raise wrong_type(f"metadata.{key}", "a string")
        if len(value) > METADATA_VALUE:
            raise invalid(f"metadata values must be at most {METADATA_VALUE} characters.", f"metadata.{key}")


def refusal(message: str, param: str) -> GatewayError:
    """The 400 for a request a translated route cannot serve (it needs a provider that speaks Responses)."""
    return GatewayError(message, param=param, code="unsupported_on_route")

