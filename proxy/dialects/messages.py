"""Anthropic's Messages API inbound (https://docs.anthropic.com/en/api/messages): what ANTHROPIC_BASE_URL=<Tollgate>
sends, from the Anthropic SDKs and Claude Code.

An Anthropic deployment gets the client's body as it is (proxy/providers/anthropic_native.py); any other gets its
Chat Completions form (messages_chat.py) and the answer is translated back (messages_chat.py, messages_events.py).
Every field Tollgate reads, or that the translation reads, is checked here for shape, so a bad body is a 400 in
Anthropic's envelope naming the parameter, never a 500; fields Tollgate does not read go on to Anthropic as they are.
"""

from __future__ import annotations

import json
import re
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from ..errors import GatewayError
from ..parsing import check_model, field, invalid, missing, number_between, wrong_type
from ..providers.base import MESSAGES, ApiRequest, Completion, JSONDict, Upstream
from . import messages_chat, messages_events

if TYPE_CHECKING:
    from accounts.keys import Caller

ROLES = ("user", "assistant")
TOOL_CHOICES = ("auto", "any", "tool", "none")
IMAGE_SOURCES = ("base64", "url", "file")
# Blocks a tool_result may hold (https://docs.anthropic.com/en/api/messages#body-messages-content); others are refused.
TOOL_RESULT_BLOCKS = ("text", "image", "document", "search_result")

# Anthropic's error types by status (https://docs.anthropic.com/en/api/errors); the SDKs pick exceptions by status.
ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
    503: "overloaded_error", 504: "timeout_error", 529: "overloaded_error",
}


# The anthropic-beta header of the request being served (https://docs.anthropic.com/en/api/beta-headers): Claude
# Code asks for features by it, and an Anthropic deployment refuses their fields without it. Comma-separated names
# only, so nothing else is ever passed on in a header.
client_beta: ContextVar[str | None] = ContextVar("client_beta", default=None)
BETA_NAMES = re.compile(r"[A-Za-z0-9._-]+(?:\s*,\s*[A-Za-z0-9._-]+)*")
BETA_MAX_LENGTH = 1000


def note_headers(request: HttpRequest) -> None:
    """Keep the request's anthropic-beta header, when well formed, for ``prepare`` (a malformed one is dropped)."""
    value = request.headers.get("anthropic-beta", "").strip()
    client_beta.set(value if len(value) <= BETA_MAX_LENGTH and BETA_NAMES.fullmatch(value) else None)


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status) or ("invalid_request_error" if status < 500 else "api_error")


def envelope(error: GatewayError) -> JSONDict:
    """Anthropic's error body. ``param`` (the JSON path of a bad value) is Tollgate's addition, as in its OpenAI
    envelope; the SDKs keep unknown fields."""
    detail: JSONDict = {"type": error_type(error.status), "message": error.message}
    if error.param:
        detail["param"] = error.param
    return {"type": "error", "error": detail}


def check_text_blocks(blocks: list[Any], at: str) -> None:
    for i, block in enumerate(blocks):
        here = f"{at}[{i}]"
        if not isinstance(block, dict):
            raise wrong_type(here, "an object")
        if field(block, "type", str, "a string", here, required=True) != "text":
            raise invalid(f"{here}.type must be 'text'.", f"{here}.type")
        field(block, "text", str, "a string", here, required=True)


def check_source(block: JSONDict, here: str, kinds: tuple[str, ...] | None) -> None:
    source = field(block, "source", dict, "an object", here, required=True)
    at = f"{here}.source"
    kind = field(source, "type", str, "a string", at, required=True)
    if kinds is not None and kind not in kinds:
        raise invalid(f"{at}.type must be one of {', '.join(kinds)}.", f"{at}.type")
    if kind == "base64":
        field(source, "media_type", str, "a string", at, required=True)
        field(source, "data", str, "a string", at, required=True)
    elif kind == "url":
        field(source, "url", str, "a string", at, required=True)
    elif kind == "file":
        field(source, "file_id", str, "a string", at, required=True)
    elif kind == "text":
        field(source, "data", str, "a string", at, required=True)
    elif kind == "content":
        content = source.get("content")
        if not isinstance(content, (str, list)):
            raise wrong_type(f"{at}.content", "a string or an array of content blocks")
        if isinstance(content, list):
            check_blocks(content, f"{at}.content", TOOL_RESULT_BLOCKS)


def check_block(block: Any, here: str, allowed: tuple[str, ...] | None) -> None:
    if not isinstance(block, dict):
        raise wrong_type(here, "an object")
    kind = field(block, "type", str, "a string", here, required=True)
    if allowed is not None and kind not in allowed:
        raise invalid(f"{here}.type must be one of {', '.join(allowed)}.", f"{here}.type")
    if kind == "text":
        field(block, "text", str, "a string", here, required=True)
    elif kind == "image":
        check_source(block, here, IMAGE_SOURCES)
    elif kind == "document":
        check_source(block, here, None)
    elif kind == "tool_use":
        field(block, "id", str, "a string", here, required=True)
        field(block, "name", str, "a string", here, required=True)
        field(block, "input", dict, "an object", here, required=True)
    elif kind == "tool_result":
        field(block, "tool_use_id", str, "a string", here, required=True)
        field(block, "is_error", bool, "a boolean", here)
        content = block.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise wrong_type(f"{here}.content", "a string or an array of content blocks")
        if isinstance(content, list):
            check_blocks(content, f"{here}.content", TOOL_RESULT_BLOCKS)
    elif kind == "thinking":
        field(block, "thinking", str, "a string", here, required=True)
        field(block, "signature", str, "a string", here)
    elif kind == "redacted_thinking":
        field(block, "data", str, "a string", here, required=True)
    # Newer block types (server tool results, search results, container uploads) go to Anthropic as they are.


def check_blocks(blocks: list[Any], at: str, allowed: tuple[str, ...] | None = None) -> None:
    for i, block in enumerate(blocks):
        # The common case first and cheaply: a text block whose text is a string.
        if block.__class__ is dict and block.get("type") == "text" and block.get("text").__class__ is str:
            continue
        check_block(block, f"{at}[{i}]", allowed)


def check_messages(messages: list[Any]) -> None:
    if not messages:
        raise invalid("'messages' must contain at least one message.", "messages")
    for i, message in enumerate(messages):
        at = f"messages[{i}]"
        if not isinstance(message, dict):
            raise wrong_type(at, "an object")
        if field(message, "role", str, "a string", at, required=True) not in ROLES:
            raise invalid(f"{at}.role must be 'user' or 'assistant'.", f"{at}.role")
        content = message.get("content")
        if content is None:
            raise missing(f"{at}.content")
        if isinstance(content, list):
            check_blocks(content, f"{at}.content")
        elif not isinstance(content, str):
            raise wrong_type(f"{at}.content", "a string or an array of content blocks")


def check_system(data: JSONDict) -> None:
    system = data.get("system")
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list):
        raise wrong_type("system", "a string or an array of text blocks")
    check_text_blocks(system, "system")


def check_tools(data: JSONDict) -> None:
    for i, tool in enumerate(field(data, "tools", list, "an array") or ()):
        at = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise wrong_type(at, "an object")
        kind = field(tool, "type", str, "a string", at)
        field(tool, "name", str, "a string", at, required=True)
        if kind in (None, "custom"):  # a server tool (web_search_..., bash_...) has a type and no schema
            field(tool, "input_schema", dict, "an object", at, required=True)
            field(tool, "description", str, "a string", at)
    choice = field(data, "tool_choice", dict, "an object")
    if choice is not None:
        kind = field(choice, "type", str, "a string", "tool_choice", required=True)
        if kind not in TOOL_CHOICES:
            raise invalid(f"tool_choice.type must be one of {', '.join(TOOL_CHOICES)}.", "tool_choice.type")
        if kind == "tool":
            field(choice, "name", str, "a string", "tool_choice", required=True)
        field(choice, "disable_parallel_tool_use", bool, "a boolean", "tool_choice")


def check_options(data: JSONDict) -> None:
    for i, stop in enumerate(field(data, "stop_sequences", list, "an array") or ()):
        if not isinstance(stop, str):
            raise wrong_type(f"stop_sequences[{i}]", "a string")
    number_between(data, "temperature", 0, 1)
    number_between(data, "top_p", 0, 1)
    if (top_k := field(data, "top_k", int, "an integer")) is not None and top_k < 0:
        raise invalid("'top_k' must be at least 0.", "top_k")
    metadata = field(data, "metadata", dict, "an object")
    if metadata is not None:
        field(metadata, "user_id", str, "a string", "metadata")
    thinking = field(data, "thinking", dict, "an object")
    if thinking is not None:
        field(thinking, "type", str, "a string", "thinking", required=True)
        field(thinking, "budget_tokens", int, "an integer", "thinking")


def check_max_tokens(data: JSONDict, *, required: bool) -> int | None:
    most = settings.TOLLGATE_MAX_COMPLETION_TOKENS
    value = field(data, "max_tokens", int, "an integer", required=required)
    if value is not None and not 1 <= value <= most:
        raise invalid(f"'max_tokens' must be between 1 and {most}.", "max_tokens")
    return value


def parse_request(data: JSONDict, *, counting: bool = False) -> ApiRequest:
    """The validated Messages request; ``counting``: a count_tokens body, which has no max_tokens or stream.
    Raises a 4xx GatewayError naming the bad parameter."""
    model = check_model(data)
    max_tokens = check_max_tokens(data, required=not counting)
    check_messages(field(data, "messages", list, "an array", required=True))
    check_system(data)
    check_tools(data)
    check_options(data)
    stream = bool(field(data, "stream", bool, "a boolean")) and not counting
    return ApiRequest(endpoint=MESSAGES, model=model, data=data, stream=stream, max_tokens=max_tokens)


class MessagesDialect:
    endpoint = MESSAGES
    done = b""  # message_stop ends the stream

    def parse(self, data: JSONDict) -> ApiRequest:
        """The validated request. Raises a 4xx GatewayError naming the bad parameter."""
        return parse_request(data)

    async def prepare(self, body: ApiRequest, caller: Caller) -> None:
        """Note the beta features the client asked for; a Messages request carries its whole conversation."""
        if (beta := client_beta.get()) is not None:
            body.state["anthropic_beta"] = beta

    def to_chat(self, body: ApiRequest) -> ApiRequest:
        """The Chat Completions request asking the same."""
        return messages_chat.to_chat(body)

    def completion(self, body: ApiRequest, completion: Completion) -> Completion:
        """The chat answer as an Anthropic message."""
        return messages_chat.completion(body, completion)

    def stream(self, body: ApiRequest, upstream: Upstream) -> Upstream:
        """Chat chunks in, Anthropic's stream events out."""
        return messages_events.MessagesStream(body, upstream)

    def error_response(self, error: GatewayError) -> HttpResponse:
        """Anthropic's error envelope, with Tollgate's status and retry headers."""
        return JsonResponse(envelope(error), status=error.status, headers=error.headers())

    def error_event(self, body: ApiRequest | None, error: GatewayError) -> bytes:
        """Anthropic's in-band `error` event."""
        return b"event: error\ndata: " + json.dumps(envelope(error), separators=(",", ":")).encode() + b"\n\n"


DIALECT = MessagesDialect()
