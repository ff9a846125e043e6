"""Calling /v1 in process the two ways tests need: Django's test client, and the lean ASGI handler that serves
/v1 in production (proxy/asgi.py), which the test client bypasses."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from asgiref.sync import async_to_sync
from django.http import HttpResponse
from django.test import Client

from proxy.asgi import ApiHandler

from ..conftest import Party

CHAT, COMPLETIONS, EMBEDDINGS = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"
HELLO = [{"role": "user", "content": "Say hello"}]


def post(client: Client, url: str, body: Any, headers: dict[str, str]) -> HttpResponse:
    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return client.post(url, data=content, content_type="application/json", headers=headers)


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "demo", "messages": HELLO, **fields}


def assert_envelope(response: HttpResponse, status: int, param: str | None, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    assert not response.content.lstrip().startswith(b"<")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    assert error["message"] and "Traceback" not in error["message"]
    return error


_handler: ApiHandler | None = None


def api_handler() -> ApiHandler:
    global _handler
    if _handler is None:
        _handler = ApiHandler()
    return _handler


@dataclass
class AsgiReply:
    status: int
    headers: dict[str, str]
    content: bytes
    writes: int = 0  # body messages sent (tests/dialects/dialect_checks.exchange counts them)

    def json(self) -> Any:
        return json.loads(self.content)

    def __getitem__(self, name: str) -> str:
        return self.headers[name.lower()]


async def asgi_call(path: str, *, method: str = "POST", chunks: list[bytes] | None = None, finished: bool = True,
                    headers: dict[str, str] | None = None, query: bytes = b"") -> AsgiReply:
    """One request through ApiHandler. ``finished=False``: the client sends ``chunks`` and then nothing more."""
    pending = [{"type": "http.request", "body": chunk, "more_body": True} for chunk in chunks or [b""]]
    if finished:
        pending[-1]["more_body"] = False
    stalled = asyncio.Event()  # never set: after its last message the client neither sends nor leaves

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await stalled.wait()
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    raw_headers = [(k.lower().encode("latin1"), v.encode("latin1")) for k, v in (headers or {}).items()]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode("utf-8", "surrogateescape"), "query_string": query, "root_path": "",
             "headers": raw_headers, "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}
    await asyncio.wait_for(api_handler()(scope, receive, send), timeout=10)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    names = {k.decode("latin1").lower(): v.decode("latin1") for k, v in start["headers"]}
    return AsgiReply(status=start["status"], headers=names, content=body)


def asgi(path: str, **kwargs: Any) -> AsgiReply:
    return async_to_sync(asgi_call)(path, **kwargs)


def json_headers(party: Party, body: bytes, **extra: str) -> dict[str, str]:
    return {**party.auth, "Content-Type": "application/json", "Content-Length": str(len(body)), **extra}


def assert_asgi_envelope(reply: AsgiReply, status: int, param: str | None, code: str | None = None) -> dict[str, Any]:
    assert reply.status == status, reply.content
    assert reply["content-type"] == "application/json"
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error
