"""/v1/files through the handler that serves /v1 in production (proxy/asgi.py), and through the official SDK."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.utils import timezone
from openai import NotFoundError, OpenAI

from batches.models import Batch, File
from proxy.asgi import UPLOAD_FRAMING_BYTES, uploads_of

from ..conftest import Party, make_party
from ..proxy.v1_client import AsgiReply, api_handler, asgi, assert_asgi_envelope
from .conftest import chat_line, store_jsonl

BOUNDARY = "tollgateboundary"
JSONL = b"".join(json.dumps(chat_line(f"line-{i}")).encode() + b"\n" for i in range(3))


def form(*parts: tuple[str, bytes, str | None], boundary: str = BOUNDARY) -> bytes:
    """A multipart/form-data body: (field name, value, filename or None for a plain field)."""
    out = b""
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + value + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def post_form(party: Party, body: bytes, *, content_type: str = f"multipart/form-data; boundary={BOUNDARY}",
              length: bool = True, chunk: int = 0) -> AsgiReply:
    headers = {**party.auth, "Content-Type": content_type}
    if length:
        headers["Content-Length"] = str(len(body))
    chunks = [body[i:i + chunk] for i in range(0, len(body), chunk)] if chunk else [body]
    return asgi("/v1/files", chunks=chunks, headers=headers)


def upload(party: Party, content: bytes = JSONL, filename: str = "input.jsonl", **options: Any) -> AsgiReply:
    return post_form(party, form(("purpose", b"batch", None), ("file", content, filename)), **options)


def call(party: Party, path: str, method: str = "GET", query: bytes = b"") -> AsgiReply:
    return asgi(path, method=method, headers=party.auth, query=query)


def stored(files_dir: Path) -> list[Path]:
    return [p for p in files_dir.rglob("*") if p.is_file()] if files_dir.exists() else []


def test_upload_stores_the_file_and_answers_the_file_object(alice: Party, files_dir: Path) -> None:
    reply = upload(alice)
    assert reply.status == 200, reply.content
    data = reply.json()
    assert set(data) == {"id", "object", "bytes", "created_at", "filename", "purpose", "status", "expires_at",
                         "status_details"}
    assert (data["object"], data["bytes"], data["filename"], data["purpose"], data["status"]) == (
        "file", len(JSONL), "input.jsonl", "batch", "processed")
    assert data["id"].startswith("file-") and isinstance(data["created_at"], int) and data["expires_at"] is None
    row = File.objects.get(public_id=data["id"])
    assert (row.tenant_id, row.key_id, row.bytes) == (alice.tenant.pk, alice.key.pk, len(JSONL))
    assert [p.read_bytes() for p in stored(files_dir)] == [JSONL]


def test_upload_sent_chunked_without_a_length(alice: Party, files_dir: Path) -> None:
    reply = upload(alice, length=False, chunk=100)
    assert reply.status == 200, reply.content
    assert reply.json()["bytes"] == len(JSONL)


def test_upload_is_not_bound_by_the_json_body_limit(alice: Party, files_dir: Path, settings: Any) -> None:
    settings.TOLLGATE_MAX_BODY_BYTES = 4096
    content = b'{"custom_id": "x"}\n' * 100_000  # 1.9 MB: past the in-memory spool too
    reply = upload(alice, content, chunk=65536)
    assert reply.status == 200, reply.content
    assert [p.read_bytes() for p in stored(files_dir)] == [content]
    # The other /v1 paths keep their own limit.
    chat = json.dumps({"model": "demo", "messages": [{"role": "user", "content": "x" * 5000}]}).encode()
    refused = asgi("/v1/chat/completions", chunks=[chat], headers={**alice.auth, "Content-Type": "application/json",
                                                                   "Content-Length": str(len(chat))})
    assert_asgi_envelope(refused, 413, None, "request_too_large")


@pytest.mark.parametrize("length", [True, False])
def test_upload_over_the_file_limit_is_413(alice: Party, files_dir: Path, settings: Any, length: bool) -> None:
    settings.TOLLGATE_FILE_MAX_BYTES = 2048
    for size in (2049, 2048 + UPLOAD_FRAMING_BYTES + 10):  # caught by the parser, then by the body limit
        reply = upload(alice, b"x" * size, length=length, chunk=1024)
        assert_asgi_envelope(reply, 413, "file", "request_too_large")
    assert upload(alice, b"x" * 2048).status == 200
    assert File.objects.count() == 1 and len(stored(files_dir)) == 1


def test_upload_refuses_other_purposes(alice: Party, files_dir: Path) -> None:
    for purpose in (b"fine-tune", b"batch_output", b"", b"\xff\xfe batch"):
        reply = post_form(alice, form(("purpose", purpose, None), ("file", JSONL, "a.jsonl")))
        assert_asgi_envelope(reply, 400, "purpose", "invalid_value")
    assert not File.objects.exists() and stored(files_dir) == []


@pytest.mark.parametrize("parts,param,code", [
    ([("purpose", b"batch", None)], "file", "missing_required_parameter"),
    ([("file", JSONL, "a.jsonl")], "purpose", "missing_required_parameter"),
    ([("purpose", b"batch", None), ("file", b"", "a.jsonl")], "file", "invalid_value"),
    ([("purpose", b"batch", None), ("file", JSONL, None)], "file", "invalid_value"),
    ([("purpose", b"batch", None), ("file", JSONL, "a.jsonl"), ("file", JSONL, "b.jsonl")], "file", "invalid_value"),
    ([("purpose", b"batch", None), ("other", JSONL, "a.jsonl")], "file", "invalid_value"),
])
def test_upload_form_errors(alice: Party, files_dir: Path, parts: list[Any], param: str, code: str) -> None:
    assert_asgi_envelope(post_form(alice, form(*parts)), 400, param, code)
    assert not File.objects.exists() and stored(files_dir) == []


@pytest.mark.parametrize("body,content_type", [
    (b'{"purpose": "batch"}', "application/json"),
    (form(("purpose", b"batch", None), ("file", JSONL, "a.jsonl")), "multipart/form-data"),  # no boundary
    (form(("purpose", b"batch", None), ("file", JSONL, "a.jsonl")), 'multipart/form-data; boundary="' + "b" * 300 + '"'),
    (form(("purpose", b"batch", None), ("file", JSONL, "a.jsonl")), "multipart/form-data; boundary=é"),
    (b"--" + BOUNDARY.encode() + b"\r\nnonsense\r\n\r\n\xff\xff", f"multipart/form-data; boundary={BOUNDARY}"),
    (b"", f"multipart/form-data; boundary={BOUNDARY}"),
    (b"\x00" * 5000, f"multipart/form-data; boundary={BOUNDARY}"),
])
def test_upload_bad_bodies_are_400(alice: Party, files_dir: Path, body: bytes, content_type: str) -> None:
    reply = post_form(alice, body, content_type=content_type)
    assert reply.status == 400, reply.content
    assert reply["content-type"] == "application/json" and set(reply.json()["error"]) == {"message", "type", "param", "code"}
    assert not File.objects.exists()


def test_upload_with_an_expiry(alice: Party, files_dir: Path) -> None:
    body = form(("purpose", b"batch", None), ("expires_after[anchor]", b"created_at", None),
                ("expires_after[seconds]", b"3600", None), ("file", JSONL, "a.jsonl"))
    data = post_form(alice, body).json()
    assert data["expires_at"] == data["created_at"] + 3600
    for anchor, seconds, param in ((b"uploaded_at", b"3600", "expires_after.anchor"),
                                   (b"created_at", b"59", "expires_after.seconds"),
                                   (b"created_at", b"2592001", "expires_after.seconds"),
                                   (b"created_at", b"1e4", "expires_after.seconds")):
        body = form(("purpose", b"batch", None), ("expires_after[anchor]", anchor, None),
                    ("expires_after[seconds]", seconds, None), ("file", JSONL, "a.jsonl"))
        assert_asgi_envelope(post_form(alice, body), 400, param, "invalid_value")
    assert File.objects.count() == 1


def test_an_expired_file_reads_as_missing(alice: Party, alice_file: File) -> None:
    File.objects.filter(pk=alice_file.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert call(alice, "/v1/files").json()["data"] == []
    for method, suffix in (("GET", ""), ("GET", "/content"), ("DELETE", "")):
        assert_asgi_envelope(call(alice, f"/v1/files/{alice_file.public_id}{suffix}", method=method), 404, "id")


def test_upload_filenames_are_cleaned(alice: Party, files_dir: Path) -> None:
    names = {"../../etc/passwd": "passwd", "C:\\temp\\in.jsonl": "in.jsonl", "in\x00put.jsonl": "input.jsonl",
             "x" * 300 + ".jsonl": ("x" * 300)[:255]}
    for sent, kept in names.items():
        reply = upload(alice, filename=sent)
        assert reply.status == 200, reply.content
        assert reply.json()["filename"] == kept
    # Contents are stored under the tenant and the file id, never under the client's name.
    assert all(p.parent.name == str(alice.tenant.pk) and p.name.startswith("file-") for p in stored(files_dir))
    huge = upload(alice, filename="y" * 5000)  # larger than a part's headers may be
    assert_asgi_envelope(huge, 400, None, "invalid_request")


def test_upload_fuzzed_bodies_never_fail_with_500(alice: Party, files_dir: Path) -> None:
    good = form(("purpose", b"batch", None), ("file", JSONL, "a.jsonl"))
    rng = random.Random(16)
    for _ in range(150):
        body = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(len(body))
            choice = rng.random()
            if choice < 0.4:
                body[at] = rng.randrange(256)
            elif choice < 0.7:
                del body[at:at + rng.randint(1, 40)]
            else:
                body[at:at] = rng.choice([b"\r\n", b"--", b'"', b";", b"\x00", b"\r\n\r\n", BOUNDARY.encode()])
        reply = post_form(alice, bytes(body))
        assert reply.status in (200, 400), reply.content
        assert set(reply.json()) == ({"error"} if reply.status == 400 else set(reply.json()))


def test_upload_needs_a_key(alice: Party, files_dir: Path) -> None:
    body = form(("purpose", b"batch", None), ("file", JSONL, "a.jsonl"))
    reply = asgi("/v1/files", chunks=[body], headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    assert_asgi_envelope(reply, 401, None, "invalid_api_key")
    assert not File.objects.exists()


def test_upload_without_a_valid_key_is_refused_before_its_body(alice: Party, files_dir: Path) -> None:
    # The client sends a first chunk of a large upload and then nothing: the answer does not wait for the rest.
    headers = {"Authorization": "Bearer tg-000000000000-" + "a" * 40, "Content-Length": str(100 * 1024 * 1024),
               "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    reply = asgi("/v1/files", chunks=[b"--" + BOUNDARY.encode() + b"\r\n"], finished=False, headers=headers)
    assert_asgi_envelope(reply, 401, None, "invalid_api_key")
    too_large = {**headers, **alice.auth, "Content-Length": str(300 * 1024 * 1024)}
    stalled = asgi("/v1/files", chunks=[b"--"], finished=False, headers=too_large)
    assert stalled.status == 413  # a valid key: the body is declared larger than the limit, so it is not read


def test_list_newest_first_with_filter_and_cursor(alice: Party, files_dir: Path) -> None:
    ids = [store_jsonl(alice, [chat_line(str(i))]).public_id for i in range(5)]
    File.objects.filter(public_id=ids[-1]).update(purpose="batch_output")
    listed = call(alice, "/v1/files").json()
    newest_first = [f["id"] for f in listed["data"]]
    assert listed["object"] == "list" and newest_first == ids[::-1] and listed["has_more"] is False
    assert (listed["first_id"], listed["last_id"]) == (newest_first[0], newest_first[-1])
    page = call(alice, "/v1/files", query=b"limit=2").json()
    assert [f["id"] for f in page["data"]] == newest_first[:2] and page["has_more"] is True
    rest = call(alice, "/v1/files", query=f"limit=2&after={page['last_id']}".encode()).json()
    assert [f["id"] for f in rest["data"]] == newest_first[2:4]
    after_asc = call(alice, "/v1/files", query=f"order=asc&after={ids[1]}".encode()).json()
    assert [f["id"] for f in after_asc["data"]] == ids[2:]
    oldest = call(alice, "/v1/files", query=b"order=asc&limit=1").json()
    assert [f["id"] for f in oldest["data"]] == [ids[0]]
    batch_only = call(alice, "/v1/files", query=b"purpose=batch_output").json()
    assert [f["id"] for f in batch_only["data"]] == [ids[-1]]


@pytest.mark.parametrize("query,param", [
    (b"limit=abc", "limit"), (b"limit=0", "limit"), (b"limit=10001", "limit"), (b"limit=-1", "limit"),
    (b"limit=%C2%B2", "limit"), (b"order=sideways", "order"), (b"after=file-nope", "after"),
    (b"purpose=" + b"p" * 200, "purpose"),
])
def test_list_bad_query_is_400(alice: Party, files_dir: Path, query: bytes, param: str) -> None:
    assert_asgi_envelope(call(alice, "/v1/files", query=query), 400, param, "invalid_value")


def test_list_with_a_query_that_is_not_utf8(alice: Party) -> None:
    assert call(alice, "/v1/files", query=b"purpose=%ff\xff").status == 400


def test_retrieve_content_and_delete(alice: Party, alice_file: File, files_dir: Path) -> None:
    path = f"/v1/files/{alice_file.public_id}"
    assert call(alice, path).json()["id"] == alice_file.public_id
    content = call(alice, path + "/content")
    assert content.status == 200 and content["content-type"] == "application/octet-stream"
    assert content.content == stored(files_dir)[0].read_bytes() and int(content["content-length"]) == alice_file.bytes
    deleted = call(alice, path, method="DELETE")
    assert deleted.json() == {"id": alice_file.public_id, "object": "file", "deleted": True}
    assert not File.objects.exists() and stored(files_dir) == []
    for method, url in (("GET", path), ("GET", path + "/content"), ("DELETE", path)):
        error = assert_asgi_envelope(call(alice, url, method=method), 404, "id", "not_found")
        assert error["message"] == f"No such File object: {alice_file.public_id}"


def test_large_content_streams_in_chunks(alice: Party, files_dir: Path) -> None:
    row = store_jsonl(alice, [b"z" * 999] * 1000)
    reply = call(alice, f"/v1/files/{row.public_id}/content")
    assert reply.status == 200 and reply.content == (b"z" * 999 + b"\n") * 1000


@pytest.mark.parametrize("status,answer", [
    *[(s, 409) for s in ("validating", "in_progress", "finalizing", "cancelling")],
    *[(s, 200) for s in ("completed", "failed", "expired", "cancelled")],
])
def test_delete_a_batch_input(alice: Party, alice_file: File, status: str, answer: int) -> None:
    batch = Batch.objects.create(tenant=alice.tenant, key=alice.key, endpoint=Batch.Endpoint.CHAT, input_file=alice_file,
                                 input_file_public_id=alice_file.public_id, queue="default", status=status)
    reply = call(alice, f"/v1/files/{alice_file.public_id}", method="DELETE")
    assert reply.status == answer, reply.content
    if answer == 409:
        error = assert_asgi_envelope(reply, 409, "id", "conflict")
        assert batch.public_id in error["message"] and status in error["message"]
        assert File.objects.filter(pk=alice_file.pk).exists()
    else:
        assert not File.objects.exists()


def test_wrong_methods_are_405(alice: Party, alice_file: File) -> None:
    for method, path, allow in (("PUT", "/v1/files", "GET, POST"),
                                ("POST", f"/v1/files/{alice_file.public_id}", "GET, DELETE"),
                                ("DELETE", f"/v1/files/{alice_file.public_id}/content", "GET")):
        reply = call(alice, path, method=method)
        assert_asgi_envelope(reply, 405, None, "method_not_allowed")
        assert reply["allow"] == allow


def test_bob_cannot_see_alices_files(alice: Party, bob: Party, alice_file: File, files_dir: Path) -> None:
    assert call(bob, "/v1/files").json()["data"] == []
    assert_asgi_envelope(call(bob, "/v1/files", query=f"after={alice_file.public_id}".encode()), 400, "after")
    path = f"/v1/files/{alice_file.public_id}"
    for method, url in (("GET", path), ("GET", path + "/content"), ("DELETE", path)):
        reply = call(bob, url, method=method)
        missing = call(bob, url.replace(alice_file.public_id, "file-" + "x" * 24), method=method)
        assert reply.status == 404 and reply.json()["error"]["message"].replace(alice_file.public_id, "ID") == \
            missing.json()["error"]["message"].replace("file-" + "x" * 24, "ID")
    assert File.objects.filter(pk=alice_file.pk).exists() and len(stored(files_dir)) == 1


def test_any_key_of_the_tenant_sees_its_files(alice: Party, alice_file: File) -> None:
    from ..factories import make_key

    _, secret = make_key(alice.tenant, name="second key")
    reply = asgi(f"/v1/files/{alice_file.public_id}", method="GET", headers={"Authorization": f"Bearer {secret}"})
    assert reply.status == 200 and reply.json()["id"] == alice_file.public_id


@pytest.mark.django_db(transaction=True)
def test_the_sdk_uploads_lists_reads_and_deletes(live_server_url: str, transactional_db: None, tmp_path: Path) -> None:
    alice, bob = make_party("alice"), make_party("bob")
    client = OpenAI(base_url=f"{live_server_url}/v1", api_key=alice.secret, max_retries=0)
    source = tmp_path / "requests.jsonl"
    source.write_bytes(JSONL)
    with source.open("rb") as handle:
        created = client.files.create(file=handle, purpose="batch",
                                      expires_after={"anchor": "created_at", "seconds": 86400})
    assert (created.purpose, created.bytes, created.filename, created.status) == ("batch", len(JSONL), "requests.jsonl",
                                                                                   "processed")
    assert created.expires_at == created.created_at + 86400
    assert [f.id for f in client.files.list()] == [created.id]
    assert [f.id for f in client.files.list(purpose="batch", limit=1)] == [created.id]
    assert client.files.retrieve(created.id).bytes == len(JSONL)
    assert client.files.content(created.id).read() == JSONL
    other = OpenAI(base_url=f"{live_server_url}/v1", api_key=bob.secret, max_retries=0)
    with pytest.raises(NotFoundError):
        other.files.retrieve(created.id)
    with pytest.raises(NotFoundError):
        other.files.content(created.id)
    deleted = client.files.delete(created.id)
    assert deleted.deleted is True and deleted.id == created.id
    assert list(client.files.list()) == []


def test_delete_answers_deleted_when_the_content_cannot_be_removed(alice: Party, alice_file: File,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from django.core.files.storage import FileSystemStorage

    def broken(self: FileSystemStorage, name: str) -> None:
        raise OSError("disk went away")

    monkeypatch.setattr(FileSystemStorage, "delete", broken)
    reply = call(alice, f"/v1/files/{alice_file.public_id}", method="DELETE")
    assert reply.status == 200 and reply.json()["deleted"] is True
    assert not File.objects.exists()


@pytest.mark.parametrize("path,on_disk", [("/v1/files", True), ("/v1/chat/completions", False)])
def test_only_upload_bodies_spool_to_disk(path: str, on_disk: bool) -> None:
    size = 2 * 1024 * 1024  # past FILE_UPLOAD_MAX_MEMORY_SIZE, within TOLLGATE_MAX_BODY_BYTES
    messages = [{"type": "http.request", "body": b"x" * 65536, "more_body": True} for _ in range(size // 65536)]
    messages[-1]["more_body"] = False

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    scope = {"path": path, "headers": []}
    body = async_to_sync(api_handler().read_api_body)(scope, receive, uploads_of(scope))
    try:
        assert body._rolled is on_disk and body.seek(0, 2) == size  # type: ignore[attr-defined]
    finally:
        body.close()



def test_an_outage_answers_503_and_missing_content_404_never_500(alice: Party, alice_file: File,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A database blip while a file is read is OpenAI's 503, which the SDKs retry; content gone from storage is a 404."""
    from django.db import OperationalError

    from batches import files, storage as file_storage

    path = f"/v1/files/{alice_file.public_id}"

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(files, "aget_file", broken)
    for url in (path, path + "/content"):
        reply = call(alice, url)
        assert reply.status == 503, (url, reply.content)
        assert "unavailable" in reply.json()["error"]["message"]
    monkeypatch.undo()

    def gone(row: File) -> None:
        raise FileNotFoundError(row.storage_name)

    monkeypatch.setattr(file_storage, "open_content", gone)
    error = assert_asgi_envelope(call(alice, path + "/content"), 404, "id", "not_found")
    assert error["message"] == f"No such File object: {alice_file.public_id}"
