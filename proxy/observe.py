"""Where each /v1 request is reported to the operator's tools: Prometheus metrics and traces.

The ledger row is the record of money; this is the record of operation. Observers are registered at startup
(proxy/apps.py) by the settings that turn them on; with none registered each call is an empty loop, so what is
off costs nothing. An observer never fails or slows a request beyond its own bookkeeping: its errors are logged
and dropped, and it does no I/O on the event loop.

Calls, once each per request:
- ``request_started(meter)`` when the request reaches the /v1 path, before authentication;
- ``request_ended(meter, ...)`` when its outcome is known (also for requests refused before authentication,
  which have no caller and leave no ledger row);
- ``row_written(meter, record)`` when its ledger row is built, with the row's tokens and cost.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .metering import Meter

logger = logging.getLogger(__name__)


class Observer(Protocol):
    def request_started(self, meter: Meter) -> None: ...

    def request_ended(self, meter: Meter, *, end_reason: str, status: int, error_code: str) -> None: ...

    def row_written(self, meter: Meter, record: Any) -> None: ...


_observers: list[Observer] = []


def register(observer: Observer) -> None:
    if observer not in _observers:
        _observers.append(observer)


def unregister(observer: Observer) -> None:
    if observer in _observers:
        _observers.remove(observer)


def request_started(meter: Meter) -> None:
    for observer in _observers:
        try:
            observer.request_started(meter)
        except Exception:
            logger.exception("observer %r failed on a request's start", observer)


def request_ended(meter: Meter, *, end_reason: str, status: int, error_code: str) -> None:
    for observer in _observers:
        try:
            observer.request_ended(meter, end_reason=end_reason, status=status, error_code=error_code)
        except Exception:
            logger.exception("observer %r failed on a request's end", observer)


def row_written(meter: Meter, record: Any) -> None:
    for observer in _observers:
        try:
            observer.row_written(meter, record)
        except Exception:
            logger.exception("observer %r failed on a ledger row", observer)
