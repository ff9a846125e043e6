"""A quiet log: no 404 for the favicon on every page, no streaming warning when the admin's static files are served."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.contrib.staticfiles import finders
from django.test import Client
from pytest_django import Settings

STATIC_LINK = re.compile(r'(?:href|src)="(/static/[^"?]+)')


def test_the_favicon_is_a_static_file_and_asking_for_it_logs_nothing(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="django.request")
    response = client.get("/favicon.ico")
    assert response.status_code == 301 and response["Location"] == "/static/tollgate/favicon.svg"
    assert finders.find("tollgate/favicon.svg")
    assert [r for r in caplog.records if r.name == "django.request"] == []


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/login/", "/admin/login/", "/password/reset/"])
def test_pages_name_their_icon_so_browsers_do_not_ask(client: Client, path: str) -> None:
    page = client.get(path).content.decode()
    assert '<link rel="icon" href="/static/tollgate/favicon.svg" type="image/svg+xml">' in page


async def asgi_get(path: str) -> tuple[int, bytes]:
    """One GET through Django's ASGI application, as uvicorn serves the admin and the pages."""
    from gateway_site.asgi import django_application

    sent: list[dict[str, Any]] = []
    pending = [{"type": "http.request", "body": b"", "more_body": False}]
    stays = asyncio.Event()  # never set: the client stays connected until the answer is sent

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop()
        await stays.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1:8000")], "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}
    await asyncio.wait_for(django_application(scope, receive, send), timeout=10)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


@pytest.mark.django_db(transaction=True)
def test_the_first_admin_visit_streams_static_files_without_a_warning(settings: Settings, tmp_path: Path) -> None:
    settings.STATIC_ROOT = tmp_path
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status, page = async_to_sync(asgi_get)("/admin/login/")
        assert status == 200
        links = sorted(set(STATIC_LINK.findall(page.decode())))
        assert "/static/tollgate/admin.css" in links and "/static/admin/css/base.css" in links
        for link in links:  # what collectstatic would have put in STATIC_ROOT
            source = finders.find(link.removeprefix("/static/"))
            assert source, link
            target = tmp_path / link.removeprefix("/static/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        for link in links:
            status, body = async_to_sync(asgi_get)(link)
            assert status == 200 and body == (tmp_path / link.removeprefix("/static/")).read_bytes(), link
    assert [str(w.message) for w in caught if "StreamingHttpResponse" in str(w.message)] == []


def test_static_files_still_stream_to_a_synchronous_client(client: Client, settings: Settings,
                                                          tmp_path: Path) -> None:
    settings.STATIC_ROOT = tmp_path
    (tmp_path / "note.txt").write_bytes(b"x" * 10_000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        response = client.get("/static/note.txt")
        assert response.status_code == 200 and b"".join(response.streaming_content) == b"x" * 10_000
    assert [str(w.message) for w in caught if "StreamingHttpResponse" in str(w.message)] == []
