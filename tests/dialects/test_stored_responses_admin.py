"""Stored responses in the ops console: listed and shown read-only, without the tenant's prompts and answers."""

from __future__ import annotations

import pytest
from django.contrib.admin.utils import quote
from django.test import Client

from ..conftest import Party
from .stored import store

pytestmark = pytest.mark.django_db


def test_the_list_and_the_page_render_without_bodies(admin_client: Client, alice: Party, bob: Party) -> None:
    row = store(alice, text="A secret answer", items=[{"role": "user", "content": "A secret question"}])
    store(bob, status="queued", background=True)
    page = admin_client.get("/admin/proxy/storedresponse/")
    html = page.content.decode()
    assert page.status_code == 200 and row.id in html and "Alice" in html and "Bob" in html
    assert admin_client.get("/admin/proxy/storedresponse/?status__exact=queued").status_code == 200
    assert row.id not in admin_client.get("/admin/proxy/storedresponse/?q=bob").content.decode()
    detail = admin_client.get(f"/admin/proxy/storedresponse/{quote(row.id)}/change/")
    text = detail.content.decode()
    assert detail.status_code == 200 and row.id in text
    assert "A secret answer" not in text and "A secret question" not in text
    assert 'name="status"' not in text  # nothing to edit


def test_nothing_can_be_added_changed_or_deleted(admin_client: Client, alice: Party) -> None:
    row = store(alice)
    assert admin_client.get("/admin/proxy/storedresponse/add/").status_code == 403
    assert admin_client.post(f"/admin/proxy/storedresponse/{quote(row.id)}/change/", {"status": "failed"}).status_code == 403
    assert admin_client.get(f"/admin/proxy/storedresponse/{quote(row.id)}/delete/").status_code == 403
    row.refresh_from_db()
    assert row.status == "completed"


def test_an_id_that_looks_like_an_admin_escape_opens_its_own_page(admin_client: Client, alice: Party) -> None:
    # The admin escapes "_" in primary keys in its URLs; "resp_22..." unescaped would read as 'resp"...'.
    row = store(alice, response_id="resp_22" + "ab" * 23)
    page = admin_client.get("/admin/proxy/storedresponse/")
    assert f'/admin/proxy/storedresponse/{quote(row.id)}/change/' in page.content.decode()
    detail = admin_client.get(f"/admin/proxy/storedresponse/{quote(row.id)}/change/")
    assert detail.status_code == 200 and row.id in detail.content.decode()
