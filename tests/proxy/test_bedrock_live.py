"""AWS Bedrock end to end, against a local stand-in that checks every request's SigV4 signature (recomputed with
botocore from what it received) and answers Converse JSON, or a ConverseStream event stream framed as AWS frames it
(prelude, headers, payload, CRC32s), sent in small pieces."""

from __future__ import annotations

import binascii
import json
import re
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from django.test import AsyncClient, Client

from billing.models import UsageRecord
from proxy.models import Deployment, ModelRoute, Provider

from ..conftest import Party
from ..live import serve_app
from .retrying import chat, healthy, row_of  # noqa: F401 (fixture)

AKID, SECRET, TOKEN = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "IQoJb3JpZ2luX2VjEXAMPLETOKEN=="
REGION, MODEL = "eu-west-3", "anthropic.claude-3-5-sonnet-20240620-v1:0"
HELLO = [{"role": "user", "content": "Hi"}]
seen: list[dict[str, Any]] = []


def header(name: str, value: str) -> bytes:
    raw = value.encode()
    return bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(raw)) + raw  # type 7: string


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message: total and headers lengths, prelude CRC, headers, payload, message CRC."""
    encoded = b"".join(header(k, v) for k, v in headers.items())
    prelude = struct.pack(">II", 16 + len(encoded) + len(payload), len(encoded))
    prelude += struct.pack(">I", binascii.crc32(prelude) & 0xFFFFFFFF)
    message = prelude + encoded + payload
    return message + struct.pack(">I", binascii.crc32(message) & 0xFFFFFFFF)


def event(kind: str, data: dict[str, Any]) -> bytes:
    return frame({":event-type": kind, ":content-type": "application/json", ":message-type": "event"},
                 json.dumps(data).encode())


def stream_frames(model: str) -> bytes:
    frames = [event("messageStart", {"role": "assistant", "p": "abcd"}),
              *(event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": t}, "p": "ab"})
                for t in ("Bonjour", " de", " Bedrock ☕")),
              event("contentBlockStop", {"contentBlockIndex": 0})]
    if model.endswith("-throttled"):  # fails mid-answer, as AWS reports it: an exception message
        return b"".join(frames) + frame({":exception-type": "throttlingException", ":content-type": "application/json",
                                          ":message-type": "exception"}, b'{"message":"Too many tokens, hunter2"}')
    if model.endswith("-cut"):
        return b"".join(frames)
    return b"".join(frames) + event("messageStop", {"stopReason": "end_turn"}) + event("metadata", {
        "usage": {"inputTokens": 11, "outputTokens": 6, "totalTokens": 1517, "cacheReadInputTokens": 1000,
                  "cacheWriteInputTokens": 500}, "metrics": {"latencyMs": 420}})


def signature_ok(scope: dict[str, Any], headers: dict[str, str], body: bytes) -> bool:
    """Recompute the request's SigV4 signature with the known credentials, from what arrived."""
    match = re.fullmatch(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/bedrock/aws4_request, "
                         r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})", headers.get("authorization", ""))
    if match is None or match[1] != AKID or match[3] != REGION or not headers.get("x-amz-date", "").startswith(match[2]):
        return False
    url = f"http://{headers['host']}{scope['raw_path'].decode()}"
    request = AWSRequest(method=scope["method"], url=url, data=body,
                         headers={name: headers[name] for name in match[4].split(";")})
    request.context["timestamp"] = headers["x-amz-date"]
    signer = SigV4Auth(Credentials(AKID, SECRET, TOKEN), "bedrock", REGION)
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    return expected == match[5] and headers.get("x-amz-security-token") == TOKEN


async def bedrock(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
    path = scope["path"]
    seen.append({"path": path, "raw_path": scope["raw_path"], "body": json.loads(body)})

    async def reply(status: int, content: bytes, kind: str = "application/json", error: str = "") -> None:
        extra = [(b"x-amzn-errortype", error.encode())] if error else []
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", kind.encode()), *extra]})
        if kind == "application/vnd.amazon.eventstream":  # in pieces that split frames and characters
            for start in range(0, len(content), 13):
                await send({"type": "http.response.body", "body": content[start:start + 13], "more_body": True})
            content = b""
        await send({"type": "http.response.body", "body": content})

    if not signature_ok(scope, headers, body):
        return await reply(403, b'{"message":"The request signature we calculated does not match."}',
                           error="InvalidSignatureException:http://internal.amazon.com/coral/com.amazon.coral.service/")
    model = path.split("/")[2]
    if model.endswith("-throttled") and path.endswith("/converse"):
        return await reply(429, b'{"message":"Too many requests, please wait."}', error="ThrottlingException")
    if path.endswith("/converse-stream"):
        return await reply(200, stream_frames(model), "application/vnd.amazon.eventstream")
    answer = {"output": {"message": {"role": "assistant", "content": [{"text": "Bonjour de Bedrock ☕"}]}},
              "stopReason": "end_turn", "metrics": {"latencyMs": 380},
              "usage": {"inputTokens": 11, "outputTokens": 6, "totalTokens": 1517, "cacheReadInputTokens": 1000,
                        "cacheWriteInputTokens": 500}}
    await reply(200, json.dumps(answer).encode())


@pytest.fixture(scope="module")
def bedrock_url() -> Iterator[str]:
    with serve_app(bedrock) as url:
        yield url


def deploy(url: str, route: str, model: str, secret: str = SECRET) -> None:
    provider, _ = Provider.objects.get_or_create(name=f"aws-{route}", defaults={"kind": "bedrock", "region": REGION,
                                                                               "base_url": url})
    provider.set_credential(f"{AKID}:{secret}:{TOKEN}")
    provider.full_clean()
    provider.save()
    Deployment.objects.create(route=ModelRoute.objects.create(name=route), provider=provider, upstream_model=model)


@pytest.fixture
def routed(db: None, bedrock_url: str) -> None:
    seen.clear()
    deploy(bedrock_url, "claude-aws", MODEL)


def stream(party: Party, model: str) -> tuple[str, list[dict[str, Any]], bytes]:
    async def request() -> tuple[str, bytes]:
        response = await AsyncClient().post(
            "/v1/chat/completions", json.dumps({"model": model, "stream": True, "messages": HELLO,
                                                "stream_options": {"include_usage": True}}),
            content_type="application/json", headers=party.auth)
        assert response.status_code == 200
        return response["x-request-id"], b"".join([part async for part in response.streaming_content])

    request_id, content = async_to_sync(request)()
    payloads = [json.loads(line[6:]) for line in content.decode().splitlines() if line.startswith("data: {")]
    return request_id, payloads, content


def test_a_signed_converse_answer_end_to_end(client: Client, alice: Party, routed: None) -> None:
    response = chat(client, alice, "claude-aws", max_tokens=50)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["model"] == "claude-aws" and body["choices"][0]["message"]["content"] == "Bonjour de Bedrock ☕"
    [sent] = seen
    assert sent["raw_path"] == f"/model/{MODEL}/converse".encode()
    assert sent["body"] == {"messages": [{"role": "user", "content": [{"text": "Hello there"}]}],
                            "inferenceConfig": {"maxTokens": 50}}
    row = row_of(response)
    assert (row.prompt_tokens, row.completion_tokens, row.cached_tokens, row.cache_write_tokens) == (1511, 6, 1000, 500)
    assert row.usage_source == UsageRecord.Source.PROVIDER and row.upstream_model == MODEL


def test_a_signed_event_stream_end_to_end(alice: Party, routed: None) -> None:
    request_id, payloads, content = stream(alice, "claude-aws")
    text = "".join(c["delta"].get("content") or "" for p in payloads for c in p["choices"])
    assert text == "Bonjour de Bedrock ☕"
    assert {p["model"] for p in payloads} == {"claude-aws"} and len({p["id"] for p in payloads}) == 1
    assert payloads[-2]["choices"][0]["finish_reason"] == "stop"
    assert payloads[-1]["usage"]["prompt_tokens"] == 1511 and content.endswith(b"data: [DONE]\n\n")
    assert seen[0]["path"] == f"/model/{MODEL}/converse-stream"
    row = UsageRecord.objects.get(request_id=request_id)
    assert (row.prompt_tokens, row.completion_tokens, row.cache_write_tokens, row.end_reason) == (1511, 6, 500, "complete")


def test_a_wrong_secret_fails_the_stand_ins_signature_check(client: Client, alice: Party, bedrock_url: str) -> None:
    deploy(bedrock_url, "claude-forged", MODEL, secret="not-the-secret")
    response = chat(client, alice, "claude-forged")
    assert response.status_code == 502 and response.json()["error"]["code"] == "upstream_auth_failed"
    assert "not-the-secret" not in response.content.decode()


def test_throttling_before_the_answer_is_a_429(client: Client, alice: Party, bedrock_url: str) -> None:
    deploy(bedrock_url, "claude-busy", "anthropic.claude-throttled")
    response = chat(client, alice, "claude-busy")
    assert response.status_code == 429 and response.json()["error"]["code"] == "upstream_rate_limited"
    assert "Too many" not in response.content.decode()


@pytest.mark.parametrize(("model", "reason"), [("anthropic.claude-throttled", "upstream_error"),
                                               ("anthropic.claude-cut", "upstream_cut")])
def test_a_stream_that_fails_midway_ends_in_band_with_one_row(alice: Party, bedrock_url: str, model: str,
                                                              reason: str) -> None:
    deploy(bedrock_url, "claude-flaky", model)
    request_id, payloads, content = stream(alice, "claude-flaky")
    *answer, failure = payloads
    assert "".join(c["delta"].get("content") or "" for p in answer for c in p["choices"]) == "Bonjour de Bedrock ☕"
    assert "error" in failure and b"[DONE]" not in content and b"hunter2" not in content
    [row] = UsageRecord.objects.filter(request_id=request_id)
    assert row.end_reason == reason and row.usage_source == UsageRecord.Source.ESTIMATED and row.completion_tokens > 0
