"""Graceful drain on SIGTERM: stop taking work, let what is in flight finish, then let the server exit.

uvicorn's own SIGTERM handling closes the listening socket at once and then waits for every open connection, so a
load balancer can no longer ask /health/ready whether the process is leaving, and one long stream holds the exit for
as long as it runs. The lifespan startup (asgi.py) therefore puts ``on_sigterm`` in front of uvicorn's handler. On
SIGTERM:

1. ``draining`` turns true: /health/ready answers 503, /health/live stays 200, and every other new request gets 503
   with Retry-After and ``Connection: close`` (the OpenAI envelope, code ``draining``, on /v1). The socket stays open.
2. Requests in flight get TOLLGATE_DRAIN_SECONDS to finish.
3. Then each /v1 request still running is cancelled with ``CANCEL_MESSAGE``: a stream ends with an in-band error
   event (never a clean [DONE]), a non-streamed request answers the 503; each writes its ledger row (end reason
   ``drained``) and settles its hold. Pages (sync views) are not cancellable and get a few more seconds.
4. Then uvicorn is asked to exit as if it had got the signal itself: it closes the socket and the idle connections
   and runs the lifespan shutdown (upkeep flush). The process exits 0.

A second SIGTERM ends the grace period at once. SIGINT (Ctrl+C) stays uvicorn's. With ``--workers N`` uvicorn's
parent sends SIGTERM to each worker, and each drains on its own. Without a lifespan (``--lifespan off``) nothing is
installed and uvicorn's own handling applies.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from typing import Any

logger = logging.getLogger(__name__)

CANCEL_MESSAGE = "tollgate: the drain's grace period is over"
FINISH_SECONDS = 5.0  # after the grace: for cancelled requests to write their rows, and for pages to end
TICK = 0.05

draining = False  # read on every request: a plain global, no lock (only the event loop's thread writes it)
grace_over = False  # the requests still running are being ended
active = 0  # HTTP requests being served, probes and /metrics aside (asgi.py counts them)
_tasks: set[asyncio.Task[Any]] = set()  # the /v1 requests' tasks (proxy/asgi.py), cancelled when the grace ends
_previous: Any = None  # the handler ours replaced (uvicorn's)
_loop: asyncio.AbstractEventLoop | None = None
_second_signal: asyncio.Event | None = None
_runner: asyncio.Task[None] | None = None


def install() -> None:
    """Put the drain in front of the running server's SIGTERM handler; nothing off the main thread (tests)."""
    global _previous, _loop
    if threading.current_thread() is not threading.main_thread():
        return
    _loop = asyncio.get_running_loop()
    _previous = signal.signal(signal.SIGTERM, on_sigterm)


def on_sigterm(sig: int, frame: Any) -> None:
    # A signal handler runs between two bytecodes of the main thread: hand the work to the event loop.
    if _loop is not None and not _loop.is_closed():
        _loop.call_soon_threadsafe(begin)


def begin() -> None:
    """Start draining (the first SIGTERM), or end the grace period now (a second one)."""
    global draining, _second_signal, _runner
    if draining:
        if _second_signal is not None:
            _second_signal.set()
        return
    from django.conf import settings

    draining = True
    _second_signal = asyncio.Event()
    logger.warning("SIGTERM: draining (%d requests in flight, up to %d s), then exiting",
                   active, settings.TOLLGATE_DRAIN_SECONDS)
    _runner = asyncio.ensure_future(run(settings.TOLLGATE_DRAIN_SECONDS, _second_signal))


async def run(grace: float, second_signal: asyncio.Event) -> None:
    global grace_over
    await wait_idle(grace, second_signal)
    if active:
        logger.warning("drain: grace period over, ending %d requests", active)
        grace_over = True
        for task in list(_tasks):
            task.cancel(CANCEL_MESSAGE)
        await wait_idle(FINISH_SECONDS, asyncio.Event())
    exit_server()


async def wait_idle(seconds: float, stop: asyncio.Event) -> None:
    """Return when nothing is in flight, after ``seconds``, or when ``stop`` is set, whichever comes first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while active and loop.time() < deadline and not stop.is_set():
        await asyncio.sleep(TICK)


def exit_server() -> None:
    """Ask the server to stop as its own SIGTERM handler would, minus the re-raise that would end us with 143."""
    server = getattr(_previous, "__self__", None)
    if server is not None and hasattr(server, "should_exit"):  # uvicorn.Server.handle_exit
        server.should_exit = True
        config = getattr(server, "config", None)
        if config is not None and config.timeout_graceful_shutdown is None:
            # What is still running now (a hung page) must not hold the exit forever.
            config.timeout_graceful_shutdown = FINISH_SECONDS
    elif callable(_previous):
        _previous(signal.SIGTERM, None)
    else:
        signal.signal(signal.SIGTERM, _previous or signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)


def track(task: asyncio.Task[Any]) -> None:
    """Register a /v1 request's task, to be cancelled if it still runs when the grace period ends."""
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


def cancelled_by_drain(error: BaseException) -> bool:
    """Whether this CancelledError is the drain ending the request (not a client that went away)."""
    return draining and CANCEL_MESSAGE in error.args


def absorb() -> None:
    """Take back the drain's cancellation: the request goes on to answer (an error) and write its row."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


PAGE_BODY = b"Tollgate is restarting. Try again in a moment.\n"


async def refuse(send: Any, *, body: bytes = PAGE_BODY, content_type: bytes = b"text/plain; charset=utf-8") -> None:
    """Answer 503 and close the connection, so the client's retry opens a new one (to another process)."""
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), (b"retry-after", b"1"),
               (b"x-should-retry", b"true"), (b"connection", b"close"), (b"cache-control", b"no-store")]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})
