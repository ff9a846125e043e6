"""POST /v1/messages/count_tokens: the input tokens of a Messages request, counted here, never by a provider.

The count is the budget gate's (proxy/sizing.py on the request's chat form, with the routed deployment's
tokenizer), so what a client is told matches what Tollgate holds for the request. No provider is asked, so no
ledger row is written. A key is required, and the key's model allow-list applies as it does to /v1/messages.
"""

from __future__ import annotations

import asyncio
import logging

from django.http import HttpRequest, HttpResponseBase, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from . import outages, routing, sizing
from .auth import authenticate
from .dialects.messages import DIALECT, parse_request
from .errors import GatewayError, MethodNotAllowed, ServerError
from .parsing import read_json
from .providers.base import LARGE_BODY_BYTES, ApiRequest
from .views import body_size

logger = logging.getLogger(__name__)


def parse(request: HttpRequest) -> ApiRequest:
    return parse_request(read_json(request), counting=True)


def count(body: ApiRequest, model: str) -> int:
    return sizing.worst_case(body, model).prompt_tokens


@csrf_exempt
async def count_tokens(request: HttpRequest) -> HttpResponseBase:
    try:
        caller = await authenticate(request)
        if request.method != "POST":
            raise MethodNotAllowed("Use POST for /v1/messages/count_tokens.")
        size = body_size(request)
        # Decoding and tokenizing a large body happen in worker threads, never on the event loop.
        body = await asyncio.to_thread(parse, request) if size > LARGE_BODY_BYTES else parse(request)
        body.size = size
        targets = await routing.route(caller, body.model)
        tokens = await asyncio.to_thread(count, body, targets[0].upstream_model)
    except GatewayError as e:
        return DIALECT.error_response(e)
    except Exception as e:
        error = outages.unavailable(e)  # the database or Redis is down: a 503 the SDKs retry
        if error is None:
            logger.exception("unexpected error on /v1/messages/count_tokens")
            error = ServerError("Tollgate failed to count the tokens. It has been logged.")
        return DIALECT.error_response(error)
    return JsonResponse({"input_tokens": tokens})
