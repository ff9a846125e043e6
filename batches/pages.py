"""The tenant's Batches page: its batches with their progress, and downloads of their files."""

from __future__ import annotations

import re
from typing import Any

from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from accounts.tenancy import tenant_page

from . import storage
from .models import Batch, File

PAGE = 50
# What new_file_id makes (a few more characters allowed): anything else, e.g. a NUL byte PostgreSQL would refuse,
# is a 404 before any query.
FILE_ID = re.compile(r"file-[A-Za-z0-9]{1,34}")
ENDED = {
    Batch.Status.COMPLETED: "completed_at", Batch.Status.FAILED: "failed_at", Batch.Status.EXPIRED: "expired_at",
    Batch.Status.CANCELLED: "cancelled_at",
}


def row(batch: Batch) -> dict[str, Any]:
    ended = batch.completed + batch.failed
    finished_at = getattr(batch, ENDED[batch.status]) if batch.status in ENDED else None
    return {"batch": batch, "ended": ended, "finished_at": finished_at}


@tenant_page()
def batch_list(request: HttpRequest) -> HttpResponse:
    tenant = request.tenant  # type: ignore[attr-defined]
    batches = (Batch.objects.filter(tenant=tenant).select_related("output_file", "error_file")
               .order_by("-id"))  # newest first; the id is the page cursor
    before = request.GET.get("before", "")
    if before.isascii() and before.isdigit() and len(before) < 19:  # a bigint, not a 500
        batches = batches.filter(id__lt=int(before))
    page = list(batches[:PAGE + 1])
    older = page[PAGE - 1].pk if len(page) > PAGE else None
    return render(request, "batches/list.html", {"title": "Batches", "rows": [row(b) for b in page[:PAGE]],
                                                 "older": older, "newest": bool(before)})


@tenant_page()
def batch_file(request: HttpRequest, file_id: str) -> FileResponse:
    """A file of the current tenant's batches, streamed from storage; another tenant's is as unknown as none."""
    mine = File.objects.filter(tenant=request.tenant)  # type: ignore[attr-defined]
    found = mine.filter(public_id=file_id).first() if FILE_ID.fullmatch(file_id) else None
    if found is None:
        raise Http404("No such file.")
    return storage.download(found)
