"""AWS Bedrock through its Converse API, signed with SigV4 by botocore (AWS's own maintained signer and decoder).

``POST {base}/model/{modelId}/converse`` answers JSON; ``/converse-stream`` answers AWS's binary event stream
(application/vnd.amazon.eventstream: length-prefixed frames with headers and CRC32s), not SSE, so streams are read
here (``open_stream``) instead of through the SSE line reader. Translation lives in bedrock_converse.py.

The credential is ``ACCESS_KEY_ID:SECRET_ACCESS_KEY`` or ``ACCESS_KEY_ID:SECRET_ACCESS_KEY:SESSION_TOKEN``. Each
request is signed when it is built (microseconds of HMAC); nothing here logs a header, a key or a signature.
Errors: https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html#API_runtime_Converse_Errors
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from urllib.parse import quote

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.eventstream import EventStreamBuffer, ParserError

from ..errors import GatewayError, ProviderError
from . import http
from .base import CHAT, ApiRequest, Chunk, Completion, JSONDict, Target, UpstreamReply, UpstreamRequest, encode_json
from .bedrock_converse import StreamTranslator, completion_payload, converse_request

# botocore's signer logs the canonical request at DEBUG, and that includes the session token: never let it through.
logging.getLogger("botocore.auth").setLevel(logging.INFO)

SERVICE = "bedrock"
EVENT_STREAM = "application/vnd.amazon.eventstream"
# Bedrock's error types (the x-amzn-ErrorType header, or the body's __type) -> the HTTP status they mean.
ERROR_STATUS = {
    "ValidationException": 400, "AccessDeniedException": 403, "UnrecognizedClientException": 403,
    "ResourceNotFoundException": 404, "ThrottlingException": 429, "ServiceQuotaExceededException": 429,
    "ModelNotReadyException": 503, "ServiceUnavailableException": 503, "ModelTimeoutException": 504,
    "ModelErrorException": 502, "InternalServerException": 500, "ModelStreamErrorException": 502,
}


def credentials_of(target: Target) -> Credentials:
    """The AWS credentials stored as the provider's key. Raises ProviderError when they are not in that form."""
    parts = target.api_key.split(":", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ProviderError(
            "The provider's credentials are not set up as ACCESS_KEY_ID:SECRET_ACCESS_KEY. Ask your Tollgate operator.",
            status=502, code="upstream_auth_failed", permanent=False,
        )
    return Credentials(parts[0], parts[1], parts[2] if len(parts) == 3 and parts[2] else None)


def region_of(target: Target) -> str:
    return str(target.options.get("region") or "us-east-1")


def signed(target: Target, path: str, payload: JSONDict, accept: str) -> UpstreamRequest:
    """The POST to ``{base}/model/{modelId}{path}``, signed for the target's region."""
    # ':' stays as it is (the HTTP client sends it unescaped, and the signature must cover the path as sent);
    # '/' in an inference profile ARN is escaped.
    url = f"{target.base_url.rstrip('/')}/model/{quote(target.upstream_model, safe=':')}{path}"
    body = encode_json(payload)
    request = AWSRequest(method="POST", url=url, data=body,
                         headers={"Content-Type": "application/json", "Accept": accept})
    SigV4Auth(credentials_of(target), SERVICE, region_of(target)).add_auth(request)
    return UpstreamRequest(url=url, body=body, headers=dict(request.headers.items()))


def error_type(headers: Mapping[str, str], content: bytes) -> str:
    """Bedrock's error type name, e.g. ThrottlingException ("" when it sent none)."""
    value: object = headers.get("x-amzn-ErrorType", "")
    if not value:
        try:
            value = json.loads(content).get("__type", "")
        except (ValueError, AttributeError):
            value = ""
    return str(value).split(":", 1)[0].rsplit("#", 1)[-1]


def mapped_error(status: int, kind: str, message: object, headers: Mapping[str, str]) -> ProviderError:
    """The error for a Bedrock failure, mapped as every provider's is (http.status_error); the message is only
    matched for a prompt too long, never passed on."""
    content = json.dumps({"error": {"message": message if isinstance(message, str) else ""}}).encode()
    return http.status_error(UpstreamReply(status_code=ERROR_STATUS.get(kind, status), headers=headers,
                                           content=content))


class EventStreamUpstream:
    """A ConverseStream answer being decoded frame by frame. Closing it early drops the connection."""

    def __init__(self, pieces: AsyncIterator[bytes], translator: StreamTranslator, close: Callable[[], None]) -> None:
        self.pieces, self.translator, self.close = pieces, translator, close

    async def __aiter__(self) -> AsyncIterator[Chunk]:
        buffer, finished = EventStreamBuffer(), False
        async for piece in self.pieces:
            buffer.add_data(piece)
            try:
                messages = list(buffer)
            except ParserError:  # a bad CRC or length: the rest of the stream cannot be trusted
                raise ProviderError("The provider sent a malformed event.", status=502, code="upstream_error",
                                    permanent=False) from None
            for message in messages:
                for chunk in self.translate(message.headers, message.payload):
                    finished = finished or chunk.finished
                    yield chunk
        if not finished:
            raise http.stream_error(ConnectionError())  # the body ended, but the answer never did

    def translate(self, headers: dict[str, object], payload: bytes) -> list[Chunk]:
        kind = headers.get(":message-type")
        if kind == "exception":
            exception = str(headers.get(":exception-type", ""))
            raise mapped_error(502, exception[:1].upper() + exception[1:], "", {})
        if kind != "event":
            raise ProviderError("The provider failed mid-stream.", status=502, code="upstream_error", permanent=False)
        try:
            data = json.loads(payload) if payload else {}
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise ProviderError("The provider sent a malformed event.", status=502, code="upstream_error",
                                permanent=False)
        return self.translator.event(str(headers.get(":event-type", "")), data)

    async def aclose(self) -> None:
        self.close()
        finish = getattr(self.pieces, "aclose", None)
        if finish is not None:
            await finish()


class BedrockProvider:
    name = "bedrock"

    def build_request(self, target: Target, body: ApiRequest) -> UpstreamRequest:
        """Return the signed Converse (or ConverseStream) request. Raises GatewayError for what Converse cannot take."""
        if body.endpoint != CHAT:
            raise GatewayError(f"The {body.endpoint} endpoint is not supported for this model's provider.",
                               code="unsupported_endpoint")
        payload = converse_request(body)
        if body.stream:
            return signed(target, "/converse-stream", payload, EVENT_STREAM)
        return signed(target, "/converse", payload, "application/json")

    async def open_stream(self, target: Target, body: ApiRequest) -> EventStreamUpstream:
        """Return the opened event stream. Raises ProviderError (status kept) before any byte reaches the client."""
        if body.is_large:
            request = await asyncio.to_thread(self.build_request, target, body)
        else:
            request = self.build_request(target, body)
        response = await http.send(request)
        if response.status >= 400:
            raise self.error_for(await http.reply(response))
        return EventStreamUpstream(http.pieces(response), StreamTranslator(target), response.close)

    def parse_response(self, target: Target, body: ApiRequest, data: JSONDict) -> Completion:
        """Return the OpenAI chat.completion for a Converse answer."""
        payload, usage, text = completion_payload(target, data)
        return Completion(payload=payload, usage=usage, text=text)

    def error_for(self, response: UpstreamReply) -> ProviderError:
        """Return the mapped error for a Bedrock 4xx/5xx (its body is {"message": ...})."""
        try:
            message = json.loads(response.content).get("message")
        except (ValueError, AttributeError):
            message = None
        kind = error_type(response.headers, response.content)
        return mapped_error(response.status_code, kind, message, response.headers)
