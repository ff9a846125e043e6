"""File contents, kept in the files storage (STORAGES["tollgate_files"]): the data folder by default, any Django
storage backend (e.g. django-storages' S3) in production. Rows (batches.models.File) hold only the name."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from typing import IO

from django.core.files import File as DjangoFile
from django.core.files.storage import Storage, storages
from django.http import FileResponse, Http404

from .models import File


def storage() -> Storage:
    return storages["tollgate_files"]


def name_for(tenant_id: int, public_id: str) -> str:
    # Never the client's filename: it could hold "../" or a name another tenant uses.
    return f"{tenant_id}/{public_id}"


def save(*, tenant_id: int, key_id: int | None, purpose: str, filename: str, content: IO[bytes], size: int) -> File:
    """Store ``content`` (a file object, read in chunks) and return its File row."""
    row = File(tenant_id=tenant_id, key_id=key_id, purpose=purpose, filename=filename[:255], bytes=size)
    row.storage_name = storage().save(name_for(tenant_id, row.public_id), DjangoFile(content))
    row.save()
    return row


def write_lines(*, tenant_id: int, purpose: str, filename: str, lines: Iterable[bytes]) -> File:
    """Store the given lines (each without its newline) as a new file, spooled on disk, never whole in memory."""
    with tempfile.TemporaryFile() as spool:
        size = 0
        for line in lines:
            spool.write(line)
            spool.write(b"\n")
            size += len(line) + 1
        spool.seek(0)
        return save(tenant_id=tenant_id, key_id=None, purpose=purpose, filename=filename, content=spool, size=size)


def open_content(row: File) -> IO[bytes]:
    """The file's content as a binary file object; the caller closes it."""
    return storage().open(row.storage_name, "rb")


def delete(row: File) -> None:
    """Remove the content and the row."""
    storage().delete(row.storage_name)
    row.delete()


def download(row: File) -> FileResponse:
    """The file as an attachment for the admin and the tenant pages, streamed from storage. Raises Http404 when its
    content is no longer stored."""
    try:
        content = open_content(row)
    except FileNotFoundError:
        raise Http404("This file's content is no longer stored.") from None
    return FileResponse(content, as_attachment=True, filename=row.filename, content_type="application/jsonl")
