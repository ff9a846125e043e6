"""GET /healthz: liveness, answered before Django's host check, so a probe on 127.0.0.1 passes whatever
DJANGO_ALLOWED_HOSTS says; every other path still refuses a host that is not allowed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgiref.sync import async_to_sync

pytestmark = pytest.mark.django_db


async def asgi_call(path: str, *, host: str, method: str = "GET") -> tuple[int, dict[bytes, bytes], bytes]:
    """One request through the whole ASGI application, as uvicorn serves it."""
    from gateway_site.asgi import application

    sent: list[dict[str, Any]] = []
    requests = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if requests:
            return requests.pop()
        await asyncio.Event().wait()  # the client stays connected until the response is sent
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", host.encode())], "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}
    await asyncio.wait_for(application(scope, receive, send), timeout=10)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


@pytest.fixture
def production_hosts(settings: Any) -> None:
    settings.ALLOWED_HOSTS = ["gw.example.com"]  # as a deployment sets DJANGO_ALLOWED_HOSTS: no 127.0.0.1


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost", "not-allowed.example", ""])
def test_healthz_answers_200_whatever_the_host(production_hosts: None, host: str) -> None:
    status, headers, body = async_to_sync(asgi_call)("/healthz", host=host)
    assert (status, body) == (200, b"ok\n")
    assert headers[b"content-type"].startswith(b"text/plain") and headers[b"cache-control"] == b"no-store"


@pytest.mark.parametrize("path", ["/admin/login/", "/login/", "/healthz/", "/api/tenants/"])
def test_other_paths_still_refuse_a_host_that_is_not_allowed(production_hosts: None, path: str) -> None:
    status, _, _ = async_to_sync(asgi_call)(path, host="127.0.0.1:8000")
    assert status == 400
    status, _, _ = async_to_sync(asgi_call)("/login/", host="gw.example.com")
    assert status == 200


def test_healthz_takes_get_and_head_only(production_hosts: None) -> None:
    status, _, body = async_to_sync(asgi_call)("/healthz", host="127.0.0.1", method="HEAD")
    assert (status, body) == (200, b"")
    status, headers, _ = async_to_sync(asgi_call)("/healthz", host="127.0.0.1", method="POST")
    assert status == 405 and headers[b"allow"] == b"GET, HEAD"

