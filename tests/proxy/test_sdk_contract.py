"""The /v1 contract, as the official OpenAI SDK sees it, against a live Tollgate process and a mock upstream."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from bench.mock_upstream import SECRET_BODY_MARKER
from billing.models import UsageRecord

from ..conftest import Party, make_party
from ..factories import make_key, make_route

pytestmark = pytest.mark.django_db(transaction=True)  # the server process must see committed rows

MESSAGES = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def alice(transactional_db: None) -> Party:
    return make_party("alice")


@pytest.fixture
def routes(mock_upstream_url: str) -> None:
    for model in ("mock", "mock-slow", "mock-long", "mock-nousage", "mock-cut", "mock-hang", "mock-400", "mock-500"):
        make_route(model, upstream_model=model, base_url=f"{mock_upstream_url}/v1", provider_name="mock")
    make_route("claude", upstream_model="claude-mock", base_url=mock_upstream_url, kind="anthropic", provider_name="mock-anthropic")
    make_route("dead", upstream_model="mock", base_url="http://127.0.0.1:9/v1", provider_name="nowhere")


def sdk(live_server_url: str, party: Party, **options: object) -> OpenAI:
    return OpenAI(base_url=f"{live_server_url}/v1", api_key=party.secret, max_retries=0, **options)  # type: ignore[arg-type]


def only_row(**filters: object) -> UsageRecord:
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        rows = list(UsageRecord.objects.filter(**filters))
        if rows:
            assert len(rows) == 1, rows
            return rows[0]
        time.sleep(0.02)
    raise AssertionError(f"no usage row for {filters}")


def test_non_streaming_chat(live_server_url: str, alice: Party, routes: None) -> None:
    completion = sdk(live_server_url, alice).chat.completions.with_raw_response.create(model="mock", messages=MESSAGES)
    parsed = completion.parse()
    assert parsed.choices[0].message.content == "Hello from the mock."
    assert parsed.usage is not None and parsed.usage.prompt_tokens == 10
    row = only_row(request_id=completion.headers["x-request-id"])
    assert (row.tenant_id, row.key_id, row.end_reason, row.status_code) == (alice.tenant.pk, alice.key.pk, "complete", 200)
    assert (row.prompt_tokens, row.completion_tokens, row.usage_source, row.stream) == (10, 5, "provider", False)
    assert float(completion.headers["x-tollgate-overhead-ms"]) >= 0


def test_streaming_chat_without_usage_request_strips_the_usage_chunk(live_server_url: str, alice: Party, routes: None) -> None:
    chunks = list(sdk(live_server_url, alice).chat.completions.create(model="mock", messages=MESSAGES, stream=True))
    assert all(chunk.choices for chunk in chunks)  # no `choices: []` usage chunk reached the client
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert text.startswith("tok0 tok1 ") and chunks[-1].choices[0].finish_reason == "stop"
    row = only_row(tenant=alice.tenant)
    # Tollgate asked the upstream for usage anyway, so the ledger is exact.
    assert (row.stream, row.prompt_tokens, row.completion_tokens, row.usage_source) == (True, 10, 20, "provider")
    assert row.ttfb_ms is not None and row.end_reason == "complete"


def test_streaming_chat_with_include_usage(live_server_url: str, alice: Party, routes: None) -> None:
    stream = sdk(live_server_url, alice).chat.completions.create(
        model="mock", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (10, 20)


def test_streaming_headers(live_server_url: str, alice: Party, routes: None) -> None:
    with httpx.stream("POST", f"{live_server_url}/v1/chat/completions", headers=alice.auth,
                      json={"model": "mock", "messages": MESSAGES, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache" and response.headers["x-accel-buffering"] == "no"
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"


def test_async_client_streams(live_server_url: str, alice: Party, routes: None) -> None:
    async def run() -> str:
        client = AsyncOpenAI(base_url=f"{live_server_url}/v1", api_key=alice.secret, max_retries=0)
        stream = await client.chat.completions.create(model="mock-slow", messages=MESSAGES, stream=True)
        parts = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
        await client.close()
        return "".join(parts)

    assert asyncio.run(run()).startswith("tok0 tok1")


def test_embeddings_and_legacy_completions(live_server_url: str, alice: Party, routes: None) -> None:
    client = sdk(live_server_url, alice)
    embeddings = client.embeddings.create(model="mock", input=["a", "b"])
    assert len(embeddings.data) == 2 and embeddings.usage.prompt_tokens == 6
    completion = client.completions.create(model="mock", prompt="Say hello")
    assert completion.choices[0].text == "Hello from the mock."
    assert set(UsageRecord.objects.values_list("endpoint", flat=True)) == {"embeddings", "completions"}


def test_models_lists_only_what_the_key_may_use(live_server_url: str, alice: Party, routes: None) -> None:
    assert {"mock", "claude", "mock-slow"} <= {m.id for m in sdk(live_server_url, alice).models.list()}
    _, limited = make_key(alice.tenant, allowed_models=["claude"])
    client = OpenAI(base_url=f"{live_server_url}/v1", api_key=limited, max_retries=0)
    assert [m.id for m in client.models.list()] == ["claude"]
    assert client.models.retrieve("claude").id == "claude"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("mock")


def test_anthropic_route_streams_and_completes(live_server_url: str, alice: Party, routes: None) -> None:
    client = sdk(live_server_url, alice)
    answer = client.chat.completions.create(model="claude", messages=MESSAGES)
    assert answer.choices[0].message.content == "Hello from the mock." and answer.usage.prompt_tokens == 12
    chunks = list(client.chat.completions.create(model="claude", messages=MESSAGES, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the mock."
    assert chunks[-1].usage.completion_tokens == 4


def test_error_classes(live_server_url: str, alice: Party, routes: None) -> None:
    client = sdk(live_server_url, alice)
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=f"{live_server_url}/v1", api_key="tg-000000000000-" + "x" * 40, max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="mock", messages=[])
    assert bad.value.body["param"] == "messages"
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert missing.value.code == "model_not_found"


@pytest.mark.parametrize("model, error, status, end_reason", [
    ("mock-400", openai.BadRequestError, 400, "upstream_error"),
    ("mock-500", openai.InternalServerError, 502, "upstream_error"),
    ("dead", openai.InternalServerError, 502, "upstream_error"),
    ("mock-hang", openai.InternalServerError, 504, "timeout"),
])
def test_upstream_failures_before_the_first_byte(
    live_server_url: str, alice: Party, routes: None, model: str, error: type[Exception], status: int, end_reason: str
) -> None:
    for stream in (False, True):
        with pytest.raises(error) as info:
            result = sdk(live_server_url, alice).chat.completions.create(model=model, messages=MESSAGES, stream=stream)
            list(result) if stream else None
        assert info.value.status_code == status  # type: ignore[attr-defined]
        assert SECRET_BODY_MARKER not in str(info.value) and "127.0.0.1" not in str(info.value)
    rows = list(UsageRecord.objects.filter(public_model=model))
    assert len(rows) == 2 and {r.end_reason for r in rows} == {end_reason} and {r.status_code for r in rows} == {status}


def test_upstream_cut_mid_stream_is_an_error_event_never_done(live_server_url: str, alice: Party, routes: None) -> None:
    stream = sdk(live_server_url, alice).chat.completions.create(model="mock-cut", messages=MESSAGES, stream=True)
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            received.append(chunk)
    assert len(received) == 3 and "middle of the answer" in str(info.value)
    row = only_row(public_model="mock-cut")
    assert (row.end_reason, row.status_code, row.usage_source) == ("upstream_cut", 502, "estimated")
    assert row.completion_tokens > 0


def test_provider_without_stream_usage_is_estimated(live_server_url: str, alice: Party, routes: None) -> None:
    chunks = list(sdk(live_server_url, alice).chat.completions.create(
        model="mock-nousage", messages=MESSAGES, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    row = only_row(public_model="mock-nousage")
    assert row.usage_source == "estimated" and row.prompt_tokens > 0
    assert row.completion_tokens == chunks[-1].usage.completion_tokens


def test_client_disconnect_closes_the_upstream_within_100_ms(
    live_server_url: str, mock_upstream_url: str, alice: Party, routes: None
) -> None:
    httpx.delete(f"{mock_upstream_url}/_events")
    with httpx.stream("POST", f"{live_server_url}/v1/chat/completions", headers=alice.auth,
                      json={"model": "mock-long", "messages": MESSAGES, "stream": True}) as response:
        lines = response.iter_lines()
        delivered = [next(lines) for _ in range(10)]
        assert any(line.startswith("data: ") for line in delivered)
        left_at = time.monotonic()  # leaving the block closes the connection
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not (events := httpx.get(f"{mock_upstream_url}/_events").json()):
        time.sleep(0.01)
    assert events and events[0]["model"] == "mock-long"
    assert events[0]["at"] - left_at < 0.1  # same process, same monotonic clock
    row = only_row(public_model="mock-long")
    assert (row.end_reason, row.usage_source) == ("client_gone", "estimated")
    assert 0 < row.completion_tokens < 400 * 3


def test_bob_cannot_use_alices_key_or_see_her_rows(live_server_url: str, alice: Party, routes: None) -> None:
    bob = make_party("bob")
    sdk(live_server_url, alice).chat.completions.create(model="mock", messages=MESSAGES)
    sdk(live_server_url, bob).chat.completions.create(model="mock", messages=MESSAGES)
    assert UsageRecord.objects.for_tenant(bob.tenant).count() == 1
    assert UsageRecord.objects.for_tenant(bob.tenant).get().key_id == bob.key.pk


def test_failure_before_the_first_byte_falls_over_to_another_deployment(
    live_server_url: str, mock_upstream_url: str, alice: Party
) -> None:
    make_route("balanced", upstream_model="mock-503", base_url=f"{mock_upstream_url}/v1", provider_name="mock", weight=1000)
    make_route("balanced", upstream_model="mock", base_url=f"{mock_upstream_url}/v1", provider_name="mock", weight=1)
    for stream in (False, True):
        result = sdk(live_server_url, alice).chat.completions.create(model="balanced", messages=MESSAGES, stream=stream)
        assert list(result) if stream else result.choices[0].message.content == "Hello from the mock."
    deadline = time.monotonic() + 3  # a stream's row is written just after its last event reached the client
    while time.monotonic() < deadline and UsageRecord.objects.filter(public_model="balanced").count() < 2:
        time.sleep(0.02)
    rows = list(UsageRecord.objects.filter(public_model="balanced"))
    assert [(r.end_reason, r.upstream_model) for r in rows] == [("complete", "mock")] * 2


def test_client_leaving_before_the_provider_answers_still_leaves_its_row(live_server_url: str, alice: Party, routes: None) -> None:
    # mock-hang holds its answer for seconds: the client gives up while Tollgate is still waiting for headers.
    for stream in (False, True):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{live_server_url}/v1/chat/completions", headers=alice.auth, timeout=0.5,
                       json={"model": "mock-hang", "messages": MESSAGES, "stream": stream})
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and UsageRecord.objects.filter(public_model="mock-hang").count() < 2:
        time.sleep(0.02)
    rows = list(UsageRecord.objects.filter(public_model="mock-hang"))
    assert sorted((r.stream, r.end_reason, r.status_code) for r in rows) == [(False, "client_gone", 499), (True, "client_gone", 499)]
