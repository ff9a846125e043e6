"""The ASGI handler that serves /v1: Django's, minus what the API path does not use.

Django's middleware are sync-first: under ASGI each one costs two thread hops per request, and the
per-request ThreadSensitiveContext starts a new thread for every request. The request_started and
request_finished signals cost a hop each, only to recycle database connections, and so does logging each
4xx. /v1 authenticates by API key and needs none of sessions, CSRF, messages or clickjacking headers, so
this handler resolves the URL (once per path) and awaits the async view with no middleware and no signals. Its few ORM steps (see proxy/db.py)
run on one long-lived thread that keeps its connection, instead of a new thread per request.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import io
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.conf import settings
from django.core.exceptions import RequestAborted, RequestDataTooBig
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.exception import convert_exception_to_response
from django.http import HttpRequest, HttpResponseBase
from django.urls import Resolver404, ResolverMatch, get_resolver

from gateway_site import drain

from .dialects import get_dialect
from .errors import GatewayError, NotFound, PayloadTooLarge, ServerError
from .providers.base import MESSAGES

STARTED = "tollgate.started"  # scope key: when the request reached Tollgate, for x-tollgate-overhead-ms
# Scope key: the client stopped sending its body; proxy/parsing.py answers 408 once the caller is known.
BODY_TIMED_OUT = "tollgate.body_timed_out"
# Scope key: the body was larger than the view's limit, so it was not read (or not to its end); the view answers 413.
BODY_TOO_LARGE = "tollgate.body_too_large"
UPLOAD_FRAMING_BYTES = 64 * 1024  # room for the multipart boundaries, part headers and small fields around a file

View = TypeVar("View", bound=Callable[..., Any])

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=512)
def resolve(path: str) -> ResolverMatch:
    # /v1 has a handful of paths (plus /v1/models/<id>): resolve each once, not on every request.
    return get_resolver().resolve(path)


@dataclass(frozen=True)
class Uploads:
    """What a view marked with accepts_uploads takes: its body limit's setting, and a check run before the body."""

    limit_setting: str
    admit: Callable[[HttpRequest], Awaitable[object]] | None

    def limit(self) -> int:
        return int(getattr(settings, self.limit_setting)) + UPLOAD_FRAMING_BYTES


def accepts_uploads(limit_setting: str, *,
                    admit: Callable[[HttpRequest], Awaitable[object]] | None = None) -> Callable[[View], View]:
    """Let a /v1 view take bodies up to ``settings.<limit_setting>`` (plus multipart framing), spooled to disk.

    Other /v1 views keep TOLLGATE_MAX_BODY_BYTES and an in-memory body. The handler finds the mark on the resolved
    view before it reads the body; the view must refuse a request whose scope says BODY_TOO_LARGE or BODY_TIMED_OUT.
    ``admit(request)`` (headers only, the body not read yet) may raise a GatewayError: it is answered at once, so
    a caller without a valid key cannot make the server receive and spool a large body.
    """

    def mark(view: View) -> View:
        view.tollgate_uploads = Uploads(limit_setting, admit)  # type: ignore[attr-defined]
        return view

    return mark


def uploads_of(scope: dict[str, Any]) -> Uploads | None:
    """The mark of the view serving this path when it accepts uploads, else None."""
    try:
        return getattr(resolve(scope["path"]).func, "tollgate_uploads", None)
    except Resolver404:
        return None


class ApiHandler(ASGIHandler):
    def __init__(self) -> None:
        super().__init__()
        # The settings, models and modules loaded by now live as long as the process: move them out of
        # the collector's reach, so a full collection walks only what requests allocate.
        gc.freeze()

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware: list[Any] = []
        self._template_response_middleware: list[Any] = []
        self._exception_middleware: list[Any] = []
        self._middleware_chain = convert_exception_to_response(self._get_response_async)

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        # Django's version also logs every 4xx through a thread hop; the /v1 views log what matters.
        response: HttpResponseBase = await self._middleware_chain(request)
        response._resource_closers.append(request.close)  # type: ignore[attr-defined]
        return response

    async def _get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        # Django would answer both failures below with an HTML page, which the SDKs cannot read.
        try:
            match = resolve(request.path_info)
        except Resolver404:
            error = NotFound(f"Unknown endpoint: {request.method} {request.path}", code="unknown_url")
            return render(request.path, error)
        try:
            response: HttpResponseBase = await match.func(request, *match.args, **match.kwargs)
        except Exception:
            logger.exception("unexpected error on %s", request.path)
            return render(request.path, ServerError("Tollgate failed to handle the request. It has been logged."))
        return response

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope[STARTED] = time.perf_counter()
        await self.handle(scope, receive, send)

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        uploads = uploads_of(scope)
        if uploads is not None and uploads.admit is not None and not await self.admitted(scope, uploads.admit, send):
            return
        try:
            body_file = await self.read_api_body(scope, receive, uploads)
        except RequestAborted:
            return
        try:
            request, error_response = self.create_request(scope, body_file)
            if request is None:  # a query string that is not UTF-8, or a body Django refuses
                error = (PayloadTooLarge("The request body is too large.") if error_response.status_code == 413
                         else GatewayError("The request's URL or headers could not be decoded.", code="invalid_request"))
                await self.send_response(render(scope["path"], error), send)
                return
            # As Django does: a disconnect while the view runs cancels the view (it records its row).
            respond = asyncio.ensure_future(self.respond(request, send))
            drain.track(respond)  # ended with an error when SIGTERM's grace period is over
            listen = asyncio.ensure_future(self.listen_for_disconnect(receive))
            await asyncio.wait([respond, listen], return_when=asyncio.FIRST_COMPLETED)
            for task in (listen, respond):
                if not task.done():
                    task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, RequestAborted):
                    pass
        finally:
            body_file.close()

    async def admitted(self, scope: dict[str, Any], admit: Callable[[HttpRequest], Awaitable[object]], send: Any) -> bool:
        """Run an upload view's check on the request's headers; False when it refused (its answer is sent)."""
        try:
            request = self.request_class(scope, io.BytesIO())
        except (UnicodeDecodeError, RequestDataTooBig):
            return True  # what create_request refuses: the normal path answers it
        try:
            await admit(request)
        except GatewayError as e:
            await self.send_response(e.response(), send)
            return False
        except Exception:
            return True  # e.g. the database is down: the view meets it again and answers in the envelope
        return True

    async def read_api_body(self, scope: dict[str, Any], receive: Any,
                            uploads: Uploads | None = None) -> tempfile.SpooledTemporaryFile[bytes]:
        """Return the body as a file, read until complete, larger than its limit, or stalled.

        The limit is TOLLGATE_MAX_BODY_BYTES, or the upload limit of a view marked with accepts_uploads (whose body
        spools to disk past FILE_UPLOAD_MAX_MEMORY_SIZE); a body past it sets BODY_TOO_LARGE in the scope.

        A body that would be refused anyway is not waited for: one declared too large is not read at all, and
        reading stops once one sent without a length passes the limit; the view answers 413 from what it has.
        A client that sends nothing for TOLLGATE_BODY_TIMEOUT_SECONDS gets 408 (Django's own read waits forever).
        """
        limit, idle = settings.TOLLGATE_MAX_BODY_BYTES, settings.TOLLGATE_BODY_TIMEOUT_SECONDS
        # In memory up to the largest accepted body (plus the chunk that crosses it): the view reads it all into
        # memory anyway, and a spill to a temporary file would write and read back every large prompt.
        in_memory = limit + 1024 * 1024
        if uploads is not None:
            # An upload is parsed from the file in a thread and never needed whole in memory.
            limit, in_memory = uploads.limit(), settings.FILE_UPLOAD_MAX_MEMORY_SIZE
        body_file = tempfile.SpooledTemporaryFile(max_size=in_memory, mode="w+b")
        if declared_length(scope) > limit:
            scope[BODY_TOO_LARGE] = True
            return body_file
        loop, size = asyncio.get_running_loop(), 0
        try:
            async with asyncio.timeout(idle) as deadline:
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise RequestAborted()
                    chunk = message.get("body", b"")
                    body_file.write(chunk)
                    size += len(chunk)
                    if size > limit:
                        scope[BODY_TOO_LARGE] = True
                        break
                    if not message.get("more_body", False):
                        break
                    deadline.reschedule(loop.time() + idle)  # a client still sending is not stalled
        except TimeoutError:
            scope[BODY_TIMED_OUT] = True
        except BaseException:
            body_file.close()
            raise
        body_file.seek(0)
        return body_file

    async def listen_for_disconnect(self, receive: Any) -> None:
        # Body the client still sends after we stopped reading (refused, or too slow) is dropped; Django's
        # version fails on it, which would cancel the answer.
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestAborted()

    async def respond(self, request: HttpRequest, send: Any) -> None:
        response: HttpResponseBase = await self.run_get_response(request)
        try:
            await self.send_response(response, send)
        except asyncio.CancelledError:
            pass  # the client left while the body was being sent
        finally:
            close_quietly(response)


def render(path: str, error: GatewayError) -> HttpResponseBase:
    """The error in the envelope of the API the path belongs to: Anthropic's on /v1/messages*, OpenAI's elsewhere."""
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return get_dialect(MESSAGES).error_response(error)
    return error.response()


def declared_length(scope: dict[str, Any]) -> int:
    """The Content-Length the client declared; 0 when none or not a number (the view answers that one)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            if not value.isdigit():  # bytes: ASCII digits only
                return 0
            return int(value) if len(value) <= 18 else 10**18  # int() refuses 4,300 digits and more
    return 0


def close_quietly(response: HttpResponseBase) -> None:
    """Close the response as HttpResponseBase.close() does, minus its request_finished signal.

    Its receivers recycle database connections and reset caches and the urlconf, run on the event loop for
    every request; /v1 keeps its connections on the database thread (proxy/db.py) and changes none of those.
    """
    for closer in response._resource_closers:  # type: ignore[attr-defined]
        try:
            closer()
        except Exception:
            pass  # as Django does: a failing closer must not stop the others
    response._resource_closers.clear()  # type: ignore[attr-defined]
    response.closed = True
