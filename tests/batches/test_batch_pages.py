"""The tenant's Batches page: progress, files, and bob never reaching alice's batches or files (404)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from batches.models import Batch, File

from ..browser.test_browser import PASSWORD, chromium, sign_in, site  # noqa: F401 (fixtures)
from ..browser.test_csp import Watched
from ..conftest import Party, make_party
from .batch_rows import make_batch, make_file

pytestmark = pytest.mark.django_db


def signed_in(party: Party) -> Client:
    client = Client()
    client.force_login(party.user)
    return client


def test_no_batches_yet(alice: Party) -> None:
    page = signed_in(alice).get("/batches/")
    assert page.status_code == 200 and "No batches yet" in page.content.decode()
    assert 'aria-current="page">Batches</a>' in page.content.decode()


def test_the_page_shows_progress_counts_and_file_links(alice: Party) -> None:
    output = make_file(alice, b'{"custom_id": "a"}\n', name="batch_x_output.jsonl")
    errors = make_file(alice, b'{"custom_id": "b"}\n', name="batch_x_error.jsonl")
    done = make_batch(alice, status=Batch.Status.COMPLETED, total=4, succeeded=3, failed=1, output_file=output,
                      error_file=errors, model="demo")
    running = make_batch(alice, total=10, succeeded=2, failed=1, running=2)
    make_batch(alice, status=Batch.Status.VALIDATING)
    Batch.objects.filter(pk=done.pk).update(completed_at=done.created_at)
    html = signed_in(alice).get("/batches/").content.decode()
    assert f'<progress value="3" max="10"' in html and f'<progress value="4" max="4"' in html
    assert running.public_id in html and done.public_id in html and "validating" in html
    assert f'href="/batches/files/{output.public_id}/"' in html and f'href="/batches/files/{errors.public_id}/"' in html
    assert html.index(running.public_id) < html.index(done.public_id)  # newest first


def test_the_page_is_csp_safe(alice: Party) -> None:
    make_batch(alice, total=3, succeeded=1)
    html = signed_in(alice).get("/batches/").content.decode()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html) and "<style" not in html and " on" + "click" not in html
    assert "style=" not in html.split("<main>", 1)[1]


def test_a_file_downloads_streamed_with_its_name(alice: Party) -> None:
    output = make_file(alice, b'{"custom_id": "a"}\n{"custom_id": "b"}\n', name="batch_x_output.jsonl")
    make_batch(alice, status=Batch.Status.COMPLETED, total=2, succeeded=2, output_file=output)
    got = signed_in(alice).get(f"/batches/files/{output.public_id}/")
    assert got.status_code == 200 and got.streaming
    assert b"".join(got.streaming_content) == b'{"custom_id": "a"}\n{"custom_id": "b"}\n'  # type: ignore[arg-type]
    assert 'attachment; filename="batch_x_output.jsonl"' == got["Content-Disposition"]


def test_bob_cannot_see_alices_batches_or_download_her_files(alice: Party, bob: Party) -> None:
    output = make_file(alice, b"secret\n", name="batch_x_output.jsonl")
    batch = make_batch(alice, status=Batch.Status.COMPLETED, total=1, succeeded=1, output_file=output)
    bobs = signed_in(bob)
    page = bobs.get("/batches/").content.decode()
    assert batch.public_id not in page and output.public_id not in page and "No batches yet" in page
    assert bobs.get(f"/batches/files/{output.public_id}/").status_code == 404
    assert signed_in(alice).get(f"/batches/files/{output.public_id}/").status_code == 200


def test_the_page_queries_do_not_grow_with_its_batches(alice: Party) -> None:
    def queries() -> int:
        client = signed_in(alice)
        with CaptureQueriesContext(connection) as captured:
            assert client.get("/batches/").status_code == 200
        return len(captured)

    def finished() -> None:
        make_batch(alice, status=Batch.Status.COMPLETED, total=1, succeeded=1, output_file=make_file(alice, b"x\n"),
                   error_file=make_file(alice, b"y\n"))

    finished()
    one = queries()
    for _ in range(5):
        finished()
    assert queries() == one


@pytest.mark.parametrize("file_id", ["file-missing", "nope", "file-" + "a" * 200, "file-%00", "file-%C3%A9", "..%2F..%2Fx"])
def test_bad_file_ids_are_404(alice: Party, file_id: str) -> None:
    assert signed_in(alice).get(f"/batches/files/{file_id}/").status_code == 404


def test_a_file_whose_content_is_gone_is_404(alice: Party) -> None:
    output = make_file(alice, b"x\n")
    File.objects.filter(pk=output.pk).update(storage_name="gone/nowhere")
    assert signed_in(alice).get(f"/batches/files/{output.public_id}/").status_code == 404


@pytest.mark.parametrize("before", ["abc", "-1", "9" * 40, "%00", "0"])
def test_bad_page_cursors_never_500(alice: Party, before: str) -> None:
    make_batch(alice, total=1)
    assert signed_in(alice).get(f"/batches/?before={before}").status_code == 200


def test_older_batches_page(alice: Party) -> None:
    made = [make_batch(alice, total=1) for _ in range(52)]
    first = signed_in(alice).get("/batches/").content.decode()
    assert made[-1].public_id in first and made[0].public_id not in first
    cursor = re.search(r'href="\?before=(\d+)"', first)
    assert cursor is not None
    second = signed_in(alice).get(f"/batches/?before={cursor.group(1)}").content.decode()
    assert made[0].public_id in second and made[1].public_id in second and made[-1].public_id not in second


def test_signed_out_visitors_go_to_sign_in(db: None) -> None:
    assert Client().get("/batches/").status_code == 302
    assert Client().get("/batches/files/file-abc/").status_code == 302


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_the_page_and_the_queues_admin_report_no_csp_violation(chromium: Any, site: str) -> None:  # noqa: F811
    alice = make_party("alice")
    alice.user.set_password(PASSWORD)
    alice.user.save()
    User.objects.create_superuser("ops", password=PASSWORD)
    make_batch(alice, total=10, succeeded=3, failed=1, running=2)
    make_batch(alice, status=Batch.Status.VALIDATING)
    owner = Watched(sign_in(chromium, site, "alice"))
    assert owner.visit(f"{site}/batches/") == []
    assert owner.page.locator("progress").first.evaluate("p => p.position") == pytest.approx(0.4)
    operator = Watched(sign_in(chromium, site, "ops"))
    for path in ("/admin/batches/batch/", "/admin/batches/batch/queues/"):
        assert operator.visit(f"{site}{path}") == [], path
