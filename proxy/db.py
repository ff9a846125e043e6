"""ORM steps of the /v1 path: each is one sync function, run on a thread with sync_to_async.

Under the lean /v1 handler there is no per-request thread and no request signal to recycle database
connections, so the steps share one long-lived thread and its connection. A step that meets a broken
connection (database restart, network blip) closes it, so the next step reconnects instead of failing.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import InterfaceError, OperationalError, connection

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


def db_step(func: Callable[P, R], *, retry: bool = False) -> Callable[P, Awaitable[R]]:
    """Return an awaitable version of a sync ORM function. With retry, a broken connection is retried once."""

    @functools.wraps(func)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except (InterfaceError, OperationalError):
            if connection.in_atomic_block:
                raise  # inside a transaction (tests): not ours to close
            connection.close()
            if not retry:
                raise
            logger.warning("database connection lost during %s; retrying once", func.__name__)
            return func(*args, **kwargs)

    return sync_to_async(run)
