"""Background responses as the official OpenAI SDK sees them: a live Tollgate process queues them, a live Celery worker
of the tier queues runs them against the mock upstream, and the ledger holds one row per run.

The worker consumes "celery" and the high and default tiers only: a low-tier tenant's response stays queued, as it
would with no worker on its queue, so it can be cancelled before any run. (Both processes share this test run's
database; the broker is the filesystem transport in the data folder, or Redis with REDIS_URL set.)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from django.conf import settings
from django.db import connection
from openai import OpenAI
from openai.types.responses import Response

from accounts.models import Tenant
from bench import mock_upstream
from billing.models import UsageRecord
from proxy.models import StoredResponse

from ..conftest import Party
from ..factories import make_route
from ..live import celery_worker, tollgate_server

pytestmark = pytest.mark.django_db(transaction=True)  # the server and the worker must see committed rows


@pytest.fixture(scope="module")
def gateway(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    folder = tmp_path_factory.mktemp("background")
    queues = settings.TOLLGATE_QUEUES
    env = {"TOLLGATE_DATA_DIR": str(folder), "TOLLGATE_ROUTES_CACHE_SECONDS": "0"}
    log = folder / "worker.log"
    database = connection.settings_dict["NAME"]
    with celery_worker(database, log, queues=f"celery,{queues['high']},{queues['default']}", TOLLGATE_UPKEEP="on",
                       **env) as worker, tollgate_server(database, folder / "server.log", **env) as url:
        deadline = time.monotonic() + 30
        while " ready." not in log.read_text(errors="replace"):
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.1)
        yield url, log


@pytest.fixture
def routes(mock_upstream_url: str) -> None:
    make_route("mock", upstream_model="mock", base_url=f"{mock_upstream_url}/v1", provider_name="mock")


def sdk(url: str, party: Party) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key=party.secret, max_retries=0)


def wait_for(client: OpenAI, response_id: str, status: str, log: Path, timeout: float = 60) -> Response:
    deadline = time.monotonic() + timeout
    seen: list[str | None] = []
    while True:
        response = client.responses.retrieve(response_id)
        if not seen or seen[-1] != response.status:
            seen.append(response.status)
        if response.status == status:
            return response
        assert time.monotonic() < deadline and response.status in ("queued", "in_progress"), (
            f"{response_id} went {seen}, not to {status}\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)


def test_a_background_response_runs_on_the_worker_with_one_ledger_row(
        gateway: tuple[str, Path], alice: Party, routes: None) -> None:
    url, log = gateway
    client = sdk(url, alice)
    upstream_before = len(mock_upstream.peers)
    queued = client.responses.create(model="mock", input="Say hello", background=True, metadata={"run": "1"})
    assert (queued.status, queued.background, queued.output, queued.metadata) == ("queued", True, [], {"run": "1"})

    done = wait_for(client, queued.id, "completed", log)
    assert (done.id, done.background, done.model) == (queued.id, True, "mock")
    assert done.output_text == "Hello from the mock."
    assert done.usage is not None and (done.usage.input_tokens, done.usage.output_tokens) == (10, 5)
    assert len(mock_upstream.peers) == upstream_before + 1  # one call to the provider

    [record] = UsageRecord.objects.filter(tenant=alice.tenant)
    assert (record.endpoint, record.key_id, record.status_code, record.prompt_tokens, record.completion_tokens) == (
        "responses", alice.key.pk, 200, 10, 5)
    items = client.responses.input_items.list(queued.id)
    assert [item.type for item in items.data] == ["message"] and items.data[0].id

    # The conversation goes on from it, in the foreground.
    follow = client.responses.create(model="mock", input="And again", previous_response_id=queued.id)
    assert follow.status == "completed" and follow.previous_response_id == queued.id
    assert UsageRecord.objects.filter(tenant=alice.tenant).count() == 2

    client.responses.delete(queued.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(queued.id)


def test_a_response_cancelled_while_queued_never_runs(gateway: tuple[str, Path], alice: Party, bob: Party,
                                                      routes: None) -> None:
    url, log = gateway
    Tenant.objects.filter(pk=alice.tenant.pk).update(batch_tier="low")  # no worker on its queue here
    client = sdk(url, alice)
    queued = client.responses.create(model="mock", input="Say hello", background=True)
    time.sleep(1)  # time enough for a worker that could take it
    assert client.responses.retrieve(queued.id).status == "queued"

    with pytest.raises(openai.NotFoundError):
        sdk(url, bob).responses.cancel(queued.id)
    cancelled = client.responses.cancel(queued.id)
    assert (cancelled.id, cancelled.status) == (queued.id, "cancelled")
    assert client.responses.retrieve(queued.id).status == "cancelled"
    assert StoredResponse.objects.get(pk=queued.id).status == "cancelled"
    assert not UsageRecord.objects.filter(tenant=alice.tenant).exists()

    with pytest.raises(openai.BadRequestError):  # finished: nothing left to cancel
        client.responses.cancel(client.responses.create(model="mock", input="Hi").id)
