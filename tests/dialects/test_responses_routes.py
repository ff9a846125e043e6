"""POST /v1/responses on each kind of route: relayed natively to a provider that speaks Responses, translated for an
OpenAI-compatible chat upstream (a function-calling round trip) and for Anthropic, with usage on the ledger row."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from decimal import Decimal

import pytest
from django.test import Client

from billing.models import Price
from proxy import routing
from proxy.models import Deployment, ModelRoute, Provider, StoredResponse
from proxy.providers.base import RESPONSES, ApiRequest, Target
from proxy.providers.responses_native import ResponsesProvider
from proxy.services import ensure_demo_route

from ..conftest import Party
from ..factories import make_route
from ..live import serve_app
from .responses_calls import answer, create, row_of, stream
from .responses_upstream import UPSTREAM_MODEL, Upstream

WEATHER = {"type": "function", "name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[Upstream, str]]:
    app = Upstream()
    with serve_app(app) as url:
        yield app, url


@pytest.fixture
def routes(db: None, upstream: tuple[Upstream, str], mock_upstream_url: str) -> Upstream:
    app, url = upstream
    app.requests.clear()
    ensure_demo_route()
    native = Provider.objects.create(name="openai-mock", kind="openai_compatible", preset="openai", base_url=f"{url}/v1")
    Deployment.objects.create(route=ModelRoute.objects.create(name="native"), provider=native, upstream_model=UPSTREAM_MODEL)
    make_route("chatty", upstream_model=UPSTREAM_MODEL, base_url=f"{url}/v1", provider_name="chat-mock")
    make_route("claude", upstream_model="mock", base_url=mock_upstream_url, kind="anthropic", provider_name="claude-mock")
    for model in ("native", "chatty", "claude"):
        Price.objects.create(model=model, input_per_million=Decimal("1"), output_per_million=Decimal("2"))
    routing.invalidate()
    return app


def test_native_whole_answer_names_the_clients_model_and_bills_the_providers_usage(
        client: Client, alice: Party, routes: Upstream) -> None:
    response = create(client, alice, model="native", input="Hi", tools=[{"type": "web_search"}], background=False,
                      metadata={"k": "v"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["model"] == "native" and body["id"] != "resp_upstream1" and body["id"].startswith("resp_")
    assert body["output"][0]["content"][0]["text"] == "Native answer." and body["store"] is True
    path, sent = routes.requests[-1]
    assert path == "/v1/responses" and sent["model"] == UPSTREAM_MODEL and sent["store"] is False
    assert sent["tools"] == [{"type": "web_search"}] and "background" not in sent  # built-in tools go through
    row = row_of(response)
    assert (row.endpoint, row.public_model, row.upstream_model) == ("responses", "native", UPSTREAM_MODEL)
    assert (row.prompt_tokens, row.completion_tokens, row.cached_tokens) == (21, 7, 5) and row.cost_picos > 0
    assert StoredResponse.objects.get(pk=body["id"]).response["model"] == "native"


def test_native_stream_passes_events_through_renamed_with_usage_on_the_row(alice: Party, routes: Upstream) -> None:
    response, events = stream(alice, model="native", input="Hi")
    assert [event.sequence_number for event in events] == list(range(10))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Native answer."
    lifecycle = [event.response for event in events if hasattr(event, "response")]
    assert {r.model for r in lifecycle} == {"native"} and len({r.id for r in lifecycle}) == 1
    final = events[-1]
    assert final.type == "response.completed" and final.response.usage.input_tokens == 21
    assert routes.requests[-1][1]["stream"] is True
    row = row_of(response)
    assert (row.endpoint, row.stream, row.end_reason) == ("responses", True, "complete")
    assert (row.prompt_tokens, row.completion_tokens, row.cached_tokens) == (21, 7, 5)
    assert StoredResponse.objects.get(pk=final.response.id).status == "completed"


def test_a_conversation_moves_from_a_translated_route_to_a_native_one(client: Client, alice: Party,
                                                                      routes: Upstream) -> None:
    first = answer(client, alice, model="demo", input="Remember the word kiwi")
    second = answer(client, alice, model="native", input="Which word?", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    sent = routes.requests[-1][1]
    # Tollgate keeps the conversation: the stored turn comes first (item ids dropped), no id reaches the provider.
    assert "previous_response_id" not in sent
    assert sent["input"][0] == {"type": "message", "role": "user", "content": "Remember the word kiwi"}
    assert sent["input"][1]["role"] == "assistant" and "id" not in sent["input"][1]
    assert sent["input"][2] == {"type": "message", "role": "user", "content": "Which word?"}
    third = answer(client, alice, model="demo", input="And now?", previous_response_id=second.id)
    assert "Remember the word kiwi" in third.output_text


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
def test_function_calling_round_trip_through_a_chat_upstream(client: Client, alice: Party, routes: Upstream,
                                                             streamed: bool) -> None:
    def ask(**fields: object) -> object:
        if streamed:
            response, events = stream(alice, model="chatty", tools=[WEATHER], **fields)
            return events[-1].response, response
        response = create(client, alice, model="chatty", tools=[WEATHER], **fields)
        from openai.types.responses import Response

        return Response.model_validate(response.json()), response

    first, first_http = ask(input="Weather in Oslo?")
    [call] = [item for item in first.output if item.type == "function_call"]
    assert (call.call_id, call.name, call.arguments) == ("call_up1", "weather", '{"city":"Oslo"}')
    path, sent = routes.requests[-1]
    assert path == "/v1/chat/completions" and sent["model"] == UPSTREAM_MODEL
    assert sent["tools"] == [{"type": "function", "function": {"name": "weather", "parameters": WEATHER["parameters"]}}]
    second, second_http = ask(previous_response_id=first.id,
                              input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Rainy, 4 C"}])
    assert second.output_text == "The tool said: Rainy, 4 C"
    assert [m["role"] for m in routes.requests[-1][1]["messages"]] == ["user", "assistant", "tool"]
    assert routes.requests[-1][1]["messages"][1]["tool_calls"][0]["id"] == "call_up1"
    for response in (first_http, second_http):
        row = row_of(response)
        assert (row.endpoint, row.prompt_tokens, row.completion_tokens) == ("responses", 30, 9)
    assert first.model == second.model == "chatty"


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
def test_an_anthropic_route_answers_through_translation(client: Client, alice: Party, routes: Upstream,
                                                        streamed: bool) -> None:
    if streamed:
        http, events = stream(alice, model="claude", input="Hi", instructions="Be brief.", max_output_tokens=50)
        response = events[-1].response
    else:
        http = create(client, alice, model="claude", input="Hi", instructions="Be brief.", max_output_tokens=50)
        from openai.types.responses import Response

        response = Response.model_validate(http.json())
    assert response.output_text == "Hello from the mock." and response.model == "claude"
    assert response.status == "completed" and response.usage.input_tokens == 12
    row = row_of(http)
    assert (row.endpoint, row.provider, row.prompt_tokens) == ("responses", "claude-mock", 12)
    assert row.completion_tokens == response.usage.output_tokens > 0


def test_azure_targets_take_responses_at_their_v1_path() -> None:
    target = Target(public_model="gpt", deployment_id=1, provider_name="az", kind="azure",
                    base_url="https://example.openai.azure.com", upstream_model="my-deployment", api_key="az-key",
                    options={"responses": True})
    body = ApiRequest(endpoint=RESPONSES, model="gpt", data={"model": "gpt", "input": "Hi", "previous_response_id": "r"})
    request = ResponsesProvider().build_request(target, body)
    assert request.url == "https://example.openai.azure.com/openai/v1/responses"
    assert request.headers["api-key"] == "az-key" and "Authorization" not in request.headers
    assert request.json() == {"model": "my-deployment", "input": "Hi", "store": False}
    openai = dataclasses.replace(target, kind="openai_compatible", base_url="https://api.openai.com/v1/")
    request = ResponsesProvider().build_request(openai, body)
    assert request.url == "https://api.openai.com/v1/responses" and request.headers["Authorization"] == "Bearer az-key"


def test_tools_images_and_tool_results_reach_anthropic_as_its_own_blocks() -> None:
    from proxy.dialects.responses import DIALECT
    from proxy.providers.anthropic import AnthropicProvider

    target = Target(public_model="claude", deployment_id=1, provider_name="a", kind="anthropic",
                    base_url="https://api.anthropic.com", upstream_model="claude-x", api_key="k")
    body = DIALECT.parse({"model": "claude", "instructions": "Be brief.", "tools": [WEATHER], "tool_choice": "required",
                          "max_output_tokens": 100, "input": [
                              {"role": "user", "content": [{"type": "input_text", "text": "Look"},
                                                           {"type": "input_image", "image_url": "https://e.com/a.png"}]},
                              {"type": "function_call", "call_id": "toolu_1", "name": "weather",
                               "arguments": '{"city":"Oslo"}'},
                              {"type": "function_call_output", "call_id": "toolu_1", "output": "Rain"}]})
    sent = AnthropicProvider().build_request(target, DIALECT.to_chat(body)).json()
    assert sent["system"] == "Be brief." and sent["max_tokens"] == 100 and sent["tool_choice"] == {"type": "any"}
    assert sent["tools"] == [{"name": "weather", "input_schema": WEATHER["parameters"]}]
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    assert sent["messages"][0]["content"][1] == {"type": "image", "source": {"type": "url", "url": "https://e.com/a.png"}}
    assert sent["messages"][1]["content"] == [{"type": "tool_use", "id": "toolu_1", "name": "weather",
                                               "input": {"city": "Oslo"}}]
    assert sent["messages"][2]["content"] == [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "Rain"}]


@pytest.fixture(scope="module")
def bedrock_url() -> Iterator[str]:
    from ..proxy.test_bedrock_live import bedrock

    with serve_app(bedrock) as url:
        yield url


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
def test_a_bedrock_route_answers_through_translation(client: Client, alice: Party, bedrock_url: str,
                                                     streamed: bool) -> None:
    from ..proxy.test_bedrock_live import MODEL, deploy, seen

    seen.clear()
    deploy(bedrock_url, "claude-aws", MODEL)
    routing.invalidate()
    if streamed:
        http, events = stream(alice, model="claude-aws", input="Salut", instructions="En français.")
        response = events[-1].response
    else:
        http = create(client, alice, model="claude-aws", input="Salut", instructions="En français.")
        from openai.types.responses import Response

        response = Response.model_validate(http.json())
    assert response.output_text == "Bonjour de Bedrock ☕" and response.model == "claude-aws"
    assert seen[0]["body"]["system"] == [{"text": "En français."}]
    usage = response.usage
    assert (usage.input_tokens, usage.input_tokens_details.cached_tokens, usage.input_tokens_details.cache_write_tokens,
            usage.output_tokens) == (1511, 1000, 500, 6)
    row = row_of(http)
    assert (row.endpoint, row.prompt_tokens, row.cached_tokens, row.cache_write_tokens) == ("responses", 1511, 1000, 500)
