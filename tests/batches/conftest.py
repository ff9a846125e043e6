"""Fixtures shared by the batch tests: a JSONL input file stored for a party, as an upload would leave it."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import pytest

from batches import storage
from batches.models import File

from ..conftest import Party


def chat_line(custom_id: str, model: str = "demo", content: str = "Say hello") -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": content}]}}


def store_jsonl(party: Party, lines: list[Any], filename: str = "input.jsonl") -> File:
    """Store ``lines`` (objects, or raw str/bytes lines) as a purpose "batch" file of the party's tenant."""
    encoded = [line if isinstance(line, bytes) else (line if isinstance(line, str) else json.dumps(line)).encode()
               for line in lines]
    content = b"".join(line + b"\n" for line in encoded)
    return storage.save(tenant_id=party.tenant.pk, key_id=party.key.pk, purpose=File.Purpose.BATCH,
                        filename=filename, content=io.BytesIO(content), size=len(content))


@pytest.fixture
def files_dir(settings: Any, tmp_path: Any) -> Any:
    """File contents under this test's temporary folder, not the shared data folder."""
    settings.STORAGES = {**settings.STORAGES, "tollgate_files": {
        "BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(tmp_path / "files")}}}
    return tmp_path / "files"


@pytest.fixture
def alice_file(alice: Party, files_dir: Any) -> File:
    """A two-line chat batch input file uploaded by alice."""
    return store_jsonl(alice, [chat_line("first"), chat_line("second")])


@pytest.fixture
def jsonl_for() -> Callable[..., File]:
    return store_jsonl
