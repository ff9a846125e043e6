"""Two live server processes sharing PostgreSQL and Redis: failures seen by either count for one circuit breaker,
and once it trips the other process routes away from the deployment within about a second."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from django.db import connection

from proxy import breaker
from proxy.models import Deployment

from ..conftest import Party, make_party
from ..factories import make_route
from ..live import tollgate_server

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.needs_postgres, pytest.mark.needs_redis]

FAILURES = 3


class Failing(BaseHTTPRequestHandler):
    """An upstream that answers every request with a 500 and counts them."""

    hits = 0

    def do_POST(self) -> None:  # noqa: N802 - the http.server name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).hits += 1
        body = json.dumps({"error": {"message": "down", "type": "server_error"}}).encode()
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def failing_upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    Failing.hits = 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


@pytest.fixture
def alice(transactional_db: None) -> Party:
    return make_party("alice")


def test_a_breaker_tripped_in_one_process_benches_the_deployment_in_the_other_within_a_second(
        alice: Party, mock_upstream_url: str, failing_upstream: str, tmp_path: Path) -> None:
    import redis

    # The failing deployment is nearly always chosen first, the working one is the fallback.
    make_route("duo", upstream_model="broken", base_url=failing_upstream, provider_name="failing", weight=1000)
    make_route("duo", upstream_model="mock", base_url=f"{mock_upstream_url}/v1", provider_name="working", weight=1)
    broken = Deployment.objects.get(upstream_model="broken")
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    client.delete(*breaker.keys(broken.pk))
    client.hdel(breaker.INDEX, str(broken.pk))
    name = connection.settings_dict["NAME"]
    env = {"TOLLGATE_BREAKER_FAILURES": str(FAILURES), "TOLLGATE_BREAKER_COOLDOWN_SECONDS": "60"}
    chat = {"model": "duo", "messages": [{"role": "user", "content": "Hi"}]}
    try:
        with tollgate_server(name, tmp_path / "one.log", **env) as one, \
                tollgate_server(name, tmp_path / "two.log", **env) as two:
            # The second process sees a failure first: it counts for the fleet, not only for itself.
            while Failing.hits < 1:  # (the working deployment is chosen first once in a thousand times)
                answer = httpx.post(f"{two}/v1/chat/completions", json=chat, headers=alice.auth, timeout=30)
                assert answer.status_code != 500, answer.text
            while Failing.hits < FAILURES:
                answer = httpx.post(f"{one}/v1/chat/completions", json=chat, headers=alice.auth, timeout=30)
                assert answer.status_code != 500, answer.text
            deadline = time.monotonic() + 5
            while client.hget(breaker.INDEX, str(broken.pk)) is None:
                assert time.monotonic() < deadline, "the breaker never tripped in Redis"
                time.sleep(0.02)
            tripped = time.monotonic()
            # Within a second (its upkeep's refresh) the other process stops sending requests to the deployment.
            time.sleep(max(0.0, tripped + 1.2 - time.monotonic()))
            seen = Failing.hits
            for _ in range(5):
                answer = httpx.post(f"{two}/v1/chat/completions", json=chat, headers=alice.auth, timeout=30)
                assert answer.status_code == 200, answer.text
            assert Failing.hits == seen
            detailed = client.hget(breaker.INDEX, str(broken.pk))
            assert detailed is not None and detailed.decode().endswith(f"|{FAILURES}|1")
    finally:
        client.delete(*breaker.keys(broken.pk))
        client.hdel(breaker.INDEX, str(broken.pk))
        client.close()
