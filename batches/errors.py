"""Answers of the /v1/files and /v1/batches views when something fails that the view did not expect."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from django.http import HttpRequest, HttpResponseBase

from proxy import outages
from proxy.errors import ServerError

logger = logging.getLogger(__name__)

View = Callable[..., Awaitable[HttpResponseBase]]


def in_envelope(view: View) -> View:
    """Answer an error the view did not expect in OpenAI's envelope too: a database or Redis outage is a 503 the SDKs
    retry, anything else a logged 500."""

    @functools.wraps(view)
    async def answer(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        try:
            return await view(request, *args, **kwargs)
        except Exception as e:
            error = outages.unavailable(e)
            if error is None:
                logger.exception("unexpected error on %s %s", request.method, request.path)
                error = ServerError("Tollgate failed to handle the request. It has been logged.")
            return error.response()

    return answer
