"""Attribution: the tags and the end user a request is recorded (and budgeted) under, set before the gate.

Tags come from the ``x-tollgate-tags`` header (comma separated: an invalid tag, or more than MAX_TAGS, is refused)
and from the body's ``metadata`` pairs as ``key:value`` (a pair that does not make a valid tag is left out, never
refused: ``metadata`` belongs to the provider's API and is forwarded). The end user is the body's ``user`` (Chat
Completions, Completions, Embeddings, Responses) or ``metadata.user_id`` (Anthropic Messages). Only these are read:
the prompt never reaches a tag. A request with none of them costs a few dict lookups.
"""

from __future__ import annotations

from itertools import islice
from typing import Any

from billing.tags import MAX_END_USER_LENGTH, MAX_TAGS, is_tag, stored

from .errors import GatewayError
from .metering import Meter
from .providers.base import MESSAGES, ApiRequest

HEADER = "HTTP_X_TOLLGATE_TAGS"  # request.META's name for x-tollgate-tags
PARAM = "x-tollgate-tags"
# At most this many metadata pairs are looked at: Chat Completions does not bound metadata, and a body may hold
# thousands of pairs; past the first few none would fit under MAX_TAGS anyway.
METADATA_PAIRS = 4 * MAX_TAGS


def attribute(meter: Meter, header: str | None, body: ApiRequest) -> None:
    """Set ``meter.tags`` and ``meter.end_user`` from the header and the parsed body. Raises a 400 GatewayError for
    an invalid header or end user, and sets nothing then."""
    data, messages = body.data, body.endpoint == MESSAGES
    metadata = data.get("metadata")
    user = None if messages else data.get("user")  # Anthropic's end user is metadata.user_id
    if header is None and not metadata and user is None:
        return
    tags = header_tags(header) if header is not None else []
    param = "user"
    if metadata.__class__ is dict:
        if messages:
            user, param = metadata.get("user_id"), "metadata.user_id"
        if len(tags) < MAX_TAGS:
            tags += metadata_tags(metadata, MAX_TAGS - len(tags), skip="user_id" if messages else "")
    end_user = check_user(user, param)
    meter.tags, meter.end_user = stored(tags), end_user


def header_tags(header: str) -> list[str]:
    """The tags of an ``x-tollgate-tags`` value. Raises a 400 GatewayError naming the header."""
    tags = [tag for part in header.split(",") if (tag := part.strip())]
    if len(tags) > MAX_TAGS:
        raise GatewayError(f"The {PARAM} header may hold at most {MAX_TAGS} tags.", param=PARAM, code="invalid_value")
    for tag in tags:
        if not is_tag(tag):
            shown = tag[:64].encode("ascii", "backslashreplace").decode()
            raise GatewayError(
                f"Invalid tag '{shown}' in the {PARAM} header: a tag is at most 64 letters, digits and _ . : = / @ + - "
                "characters, starting with a letter or digit.", param=PARAM, code="invalid_value")
    return tags


def metadata_tags(metadata: dict[Any, Any], room: int, *, skip: str = "") -> list[str]:
    """``key:value`` for the metadata pairs that make valid tags, at most ``room`` of them."""
    tags = []
    for key, value in islice(metadata.items(), METADATA_PAIRS):
        if key.__class__ is str and value.__class__ is str and key != skip and is_tag(tag := f"{key}:{value}"):
            tags.append(tag)
            if len(tags) == room:
                break
    return tags


def check_user(user: Any, param: str) -> str:
    """The end user to record ("" for none). Raises a 400 GatewayError for a value the ledger cannot keep."""
    if user is None:
        return ""
    if user.__class__ is not str:
        raise GatewayError(f"Invalid type for '{param}': expected a string.", param=param, code="invalid_type")
    if len(user) > MAX_END_USER_LENGTH:
        raise GatewayError(f"'{param}' must be at most {MAX_END_USER_LENGTH} characters.", param=param,
                           code="invalid_value")
    if "\x00" in user:
        # Kept on the ledger row, and PostgreSQL text cannot hold NUL: the row would be lost.
        raise GatewayError(f"'{param}' must not contain NUL characters.", param=param, code="invalid_value")
    return user
