"""OpenAI chat messages, tools and tool choice in Anthropic's Messages shape (the request half of anthropic.py).

Content blocks: https://docs.anthropic.com/en/api/messages (text, image, tool_use, tool_result)
Tools: https://docs.anthropic.com/en/docs/agents-and-tools/tool-use/implement-tool-use
Prompt caching: https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching

Every error names the OpenAI parameter at fault, as a 400 in the OpenAI envelope: nothing a client sends reaches
Anthropic in a shape it would refuse with a message we cannot pass on.
"""

from __future__ import annotations

import binascii
import json
from typing import Any

from ..errors import GatewayError
from .base import JSONDict

# The image types Anthropic accepts (https://docs.anthropic.com/en/docs/build-with-claude/vision).
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
LEGACY = ("functions", "function_call")
JSON_OBJECT_TOOL = "json_answer"  # the tool that carries a json_object answer


def cache_control(holder: JSONDict, param: str) -> JSONDict:
    """The ``cache_control`` a client put on a content part or a tool (Anthropic's own extension), to pass on."""
    value = holder.get("cache_control")
    if value is None:
        return {}
    if not (isinstance(value, dict) and isinstance(value.get("type"), str)):
        raise GatewayError('cache_control must be an object such as {"type": "ephemeral"}.',
                           param=f"{param}.cache_control")
    return {"cache_control": value}


def image_block(part: JSONDict, param: str) -> JSONDict:
    """An image_url part as an image block: a data: URL becomes a base64 source, an http(s) URL a url source."""
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    param = f"{param}.image_url"
    if not isinstance(url, str) or not url:
        raise GatewayError("image_url.url must be a non-empty string.", param=param)
    if url.startswith("data:"):
        header, comma, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if not comma or encoding != "base64" or not data:
            raise GatewayError("An image data URL must look like data:image/png;base64,<data>.", param=param)
        if media_type.lower() not in IMAGE_TYPES:
            raise GatewayError(f"Image type {media_type[:40]!r} is not supported for this model; send JPEG, PNG, GIF "
                               "or WebP.", param=param)
        try:
            binascii.a2b_base64(data[:4096], strict_mode=True)  # the head tells base64 from anything else
        except binascii.Error:
            raise GatewayError("The image data URL is not valid base64.", param=param) from None
        source: JSONDict = {"type": "base64", "media_type": media_type.lower(), "data": data}
    elif url.startswith(("https://", "http://")):
        source = {"type": "url", "url": url}
    else:
        raise GatewayError("An image URL must be an http(s) URL or a base64 data URL.", param=param)
    return {"type": "image", "source": source, **cache_control(part, param.removesuffix(".image_url"))}


def content_blocks(content: Any, param: str, *, images: bool = True) -> list[JSONDict]:
    """Anthropic blocks for OpenAI message content: text and (where allowed) images, with any cache_control."""
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise GatewayError("Message content must be a string or a list of content parts.", param=param)
    blocks: list[JSONDict] = []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            # Anthropic rejects empty text blocks, and an empty part carries nothing.
            if part["text"]:
                blocks.append({"type": "text", "text": part["text"], **cache_control(part, where)})
        elif kind == "image_url" and images:
            blocks.append(image_block(part, where))
        else:
            allowed = "text and image parts" if images else "text parts"
            raise GatewayError(f"Only {allowed} are supported here for this model.", param=where)
    return blocks


def tool_use_blocks(calls: Any, param: str) -> list[JSONDict]:
    """An assistant message's tool_calls as tool_use blocks, their JSON arguments parsed into ``input``."""
    if not isinstance(calls, list):
        raise GatewayError("tool_calls must be a list.", param=param)
    blocks: list[JSONDict] = []
    for j, call in enumerate(calls):
        where = f"{param}[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not (isinstance(function, dict) and call.get("type", "function") == "function"):
            raise GatewayError("Each tool call must be a function call.", param=where)
        if not (isinstance(call.get("id"), str) and call["id"]):
            raise GatewayError("Each tool call needs its id.", param=f"{where}.id")
        if not (isinstance(function.get("name"), str) and function["name"]):
            raise GatewayError("Each tool call needs its function name.", param=f"{where}.function.name")
        arguments = function.get("arguments")
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str) and arguments.strip() else {}
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict) or not isinstance(arguments, (str, type(None))):
            raise GatewayError("Tool call arguments must be a JSON object encoded as a string.",
                               param=f"{where}.function.arguments")
        blocks.append({"type": "tool_use", "id": call["id"], "name": function["name"], "input": parsed})
    return blocks


def tool_result_block(message: JSONDict, index: int) -> JSONDict:
    """A role "tool" message as a tool_result block for the user turn that answers the assistant's tool_use."""
    call_id = message.get("tool_call_id")
    if not (isinstance(call_id, str) and call_id):
        raise GatewayError("A tool message needs the tool_call_id it answers.", param=f"messages[{index}].tool_call_id")
    block: JSONDict = {"type": "tool_result", "tool_use_id": call_id}
    content = message.get("content")
    if isinstance(content, str):
        if content:
            block["content"] = content
    else:
        blocks = content_blocks(content, f"messages[{index}].content")
        if blocks:
            block["content"] = blocks
    return block


def translate_messages(messages: Any) -> tuple[str | list[JSONDict], list[JSONDict]]:
    """Return the system prompt (joined text, or text blocks when a part asks for cache_control) and strictly
    alternating user/assistant turns. Tool results go in user turns, consecutive ones merged into one turn."""
    if not isinstance(messages, list) or not messages:
        raise GatewayError("messages must be a non-empty list.", param="messages")
    system: list[JSONDict] = []
    turns: list[JSONDict] = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        param = f"messages[{i}].content"
        if role in ("system", "developer"):
            system.extend(content_blocks(message.get("content"), param, images=False))
            continue
        if role == "function" or (role == "assistant" and message.get("function_call")):
            raise GatewayError("Legacy function calling is not supported for this model; send tools and tool "
                               "messages instead.", param=f"messages[{i}].role" if role == "function"
                               else f"messages[{i}].function_call")
        if role == "tool":
            role, blocks = "user", [tool_result_block(message, i)]
        elif role == "user":
            blocks = content_blocks(message.get("content"), param)
        elif role == "assistant":
            blocks = content_blocks(message.get("content"), param, images=False)
            if message.get("tool_calls"):
                blocks += tool_use_blocks(message["tool_calls"], f"messages[{i}].tool_calls")
        else:
            raise GatewayError(f"Messages with role {role!r} are not supported for this model.",
                               param=f"messages[{i}].role")
        if not blocks:
            continue
        # Anthropic requires user and assistant turns to alternate, so same-role neighbours become one turn.
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    if any("cache_control" in block for block in system):
        return system, turns
    return "\n\n".join(block["text"] for block in system), turns


def tools(value: Any) -> list[JSONDict]:
    """OpenAI function tools as Anthropic tools: name, description and the parameters' JSON schema."""
    if not isinstance(value, list):
        raise GatewayError("tools must be a list.", param="tools")
    result: list[JSONDict] = []
    for i, tool in enumerate(value):
        where = f"tools[{i}]"
        if not (isinstance(tool, dict) and tool.get("type") == "function"):
            raise GatewayError("Only function tools are supported for this model.", param=f"{where}.type")
        function = tool.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not (isinstance(name, str) and name):
            raise GatewayError("Each tool needs a function name.", param=f"{where}.function.name")
        assert isinstance(function, dict)
        schema = function.get("parameters")
        if schema is None:
            schema = {"type": "object", "properties": {}}  # OpenAI allows a function without parameters
        elif not isinstance(schema, dict):
            raise GatewayError("A function's parameters must be a JSON schema object.", param=f"{where}.function.parameters")
        entry: JSONDict = {"name": name, "input_schema": schema}
        if isinstance(function.get("description"), str):
            entry["description"] = function["description"]
        result.append({**entry, **cache_control(tool, where)})
    return result


def tool_choice(value: Any, parallel: Any) -> JSONDict | None:
    """OpenAI's tool_choice (and parallel_tool_calls) as Anthropic's tool_choice; None leaves Anthropic's default."""
    if value is None or value == "auto":
        choice: JSONDict = {"type": "auto"}
    elif value == "none":
        return {"type": "none"}  # Anthropic's "none" takes no other field
    elif value == "required":
        choice = {"type": "any"}
    elif isinstance(value, dict) and value.get("type") == "function" and isinstance(value.get("function"), dict) \
            and isinstance(value["function"].get("name"), str) and value["function"]["name"]:
        choice = {"type": "tool", "name": value["function"]["name"]}
    else:
        raise GatewayError('tool_choice must be "none", "auto", "required" or {"type": "function", "function": '
                           '{"name": ...}}.', param="tool_choice")
    if parallel is False:
        choice["disable_parallel_tool_use"] = True
    elif value is None:
        return None
    return choice


def check_unsupported(data: JSONDict) -> None:
    """Refuse, naming the parameter, what this translation does not carry (documented in the README)."""
    for name in LEGACY:
        if data.get(name):
            raise GatewayError("Legacy function calling (functions, function_call) is not supported for this model; "
                               "send tools and tool_choice instead.", param=name)
    if data.get("n") not in (None, 1):
        # Anthropic answers one choice per request; fanning out would multiply the budget hold and the ledger rows.
        raise GatewayError("Only n=1 is supported for this model: send one request per choice.", param="n")


def answer_name(data: JSONDict) -> str | None:
    """The tool that carries a JSON answer (see answer_tool), or None when the client asked for no JSON format."""
    response_format = data.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, dict) else response_format
    if kind == "json_object":
        return JSON_OBJECT_TOOL
    spec = response_format.get("json_schema") if kind == "json_schema" and isinstance(response_format, dict) else None
    name = spec.get("name") if isinstance(spec, dict) else None
    return name if isinstance(name, str) and name else None


def answer_tool(data: JSONDict) -> JSONDict | None:
    """response_format json_schema or json_object as a tool the model is made to call: Anthropic has no JSON mode,
    and a forced tool's input is JSON that follows the tool's schema. The answer gives that input back as the
    message content (anthropic.py), so the client sees what OpenAI's JSON modes return."""
    response_format = data.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, dict) else response_format
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        schema: Any = {"type": "object"}
    elif kind == "json_schema":
        spec = response_format.get("json_schema") if isinstance(response_format, dict) else None
        if answer_name(data) is None:
            raise GatewayError("response_format.json_schema needs a name.", param="response_format.json_schema.name")
        assert isinstance(spec, dict)
        schema = spec.get("schema", {"type": "object"})
        if not (isinstance(schema, dict) and schema.get("type") == "object"):
            raise GatewayError("For this model a JSON schema must describe an object (\"type\": \"object\").",
                               param="response_format.json_schema.schema")
    else:
        raise GatewayError("response_format must be text, json_object or json_schema.", param="response_format.type")
    if data.get("tools") or data.get("tool_choice") not in (None, "auto", "none"):
        raise GatewayError("For this model a JSON response_format cannot be combined with tools: Tollgate asks for the "
                           "JSON through a tool of its own.", param="response_format")
    return {"name": answer_name(data), "description": "Give your answer as this tool's input.", "input_schema": schema}
