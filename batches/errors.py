"""Answers of the /v1/files and /v1/batches views when something fails that the view did not expect."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from django.http import HttpRequest, HttpResponseBase

from proxy import outages

View = Callable[..., Awaitable[HttpResponseBase]]


def in_envelope(view: View) -> View:
    """Answer an error the view did not expect in OpenAI's envelope too: a database or Redis outage is a 503 the SDKs
    retry, anything else a logged 500."""

    @functools.wraps(view)
    async def answer(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        try:
            return await view(request, *args, **kwargs)
        except Exception as e:
            return outages.failure(e, f"{request.method} {request.path}").response()

    return answer
