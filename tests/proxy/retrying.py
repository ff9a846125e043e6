"""What the retry and fallback tests share: routes on the mock upstream, a fake clock, and the request."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient, Client

from billing.models import UsageRecord
from proxy import retries, routing
from proxy.models import ModelRoute

from ..conftest import Party
from ..factories import make_route


@dataclass
class Clock:
    """Stands in for retries.sleep and retries.now: a wait passes at once and moves the clock on."""

    waits: list[float] = field(default_factory=list)
    offset: float = 0.0

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.offset += seconds

    def now(self) -> float:
        return time.perf_counter() + self.offset


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(retries, "sleep", fake.sleep)
    monkeypatch.setattr(retries, "now", fake.now)
    return fake


@pytest.fixture(autouse=True)
def healthy() -> Iterator[None]:
    # Deployment ids come back after a rollback (SQLite): no test inherits another's failures.
    getattr(routing, "_failures", {}).clear()
    routing.invalidate()
    yield
    getattr(routing, "_failures", {}).clear()


def flaky(status: int = 429, times: int = 1, **headers: object) -> str:
    """A mock upstream model that fails ``times`` requests with ``status`` (and the headers given), then answers."""
    options = "".join(f"&{name}={value}" for name, value in headers.items())
    return f"mock-flaky?status={status}&times={times}{options}&tag={uuid.uuid4().hex[:12]}"


def deploy(url: str, name: str, *models: str, kind: str = "openai_compatible", **route_fields: Any) -> ModelRoute:
    """A route with one deployment per upstream model, each on a provider of its own, on the mock upstream."""
    base_url = f"{url}/v1" if kind == "openai_compatible" else url
    for i, model in enumerate(models):
        make_route(name, upstream_model=model, base_url=base_url, kind=kind, provider_name=f"{name}-{i}", **route_fields)
    return ModelRoute.objects.get(name=name)


def chat(client: Client, party: Party, model: str, **body: object) -> Any:
    payload = {"model": model, "messages": [{"role": "user", "content": "Hello there"}], **body}
    return client.post("/v1/chat/completions", json.dumps(payload), content_type="application/json",
                       headers=party.auth)


def stream(party: Party, model: str) -> tuple[Any, str]:
    """A streamed chat request and everything it sent, read in the event loop the view ran in."""
    async def request() -> tuple[Any, str]:
        response = await AsyncClient().post(
            "/v1/chat/completions", json.dumps({"model": model, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}),
            content_type="application/json", headers=party.auth)
        return response, b"".join([part async for part in response.streaming_content]).decode()

    return async_to_sync(request)()


def row_of(response: Any) -> UsageRecord:
    [row] = UsageRecord.objects.filter(request_id=response["x-request-id"])
    return row
