"""The management API's errors: what Django lets through from a view becomes a 4xx in DRF's envelope, never a 500.

Views refuse bad input with proper validation first; this is the safety net for what validation cannot see
(a row another request inserted a moment ago, a row that became referenced between the check and the delete).
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError, IntegrityError
from django.db.models import ProtectedError, RestrictedError
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

logger = logging.getLogger(__name__)


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "This conflicts with the current state of the data."
    default_code = "conflict"


def still_referenced(exc: ProtectedError | RestrictedError, advice: str) -> Conflict:
    """A 409 naming what still refers to the object (kinds and counts, never the rows themselves)."""
    counts: dict[str, int] = {}
    for obj in exc.protected_objects if isinstance(exc, ProtectedError) else exc.restricted_objects:
        name = str(obj._meta.verbose_name_plural)
        counts[name] = counts.get(name, 0) + 1
    what = ", ".join(f"{n} {name}" for name, n in sorted(counts.items()))
    return Conflict(f"Still referenced by {what}; {advice}")


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, after turning Django's data errors into API errors."""
    translated = as_api_error(exc)
    if translated is not exc:
        # The database text may quote submitted values, so only the kind of error and the view are logged.
        view = context.get("view")
        logger.warning("management API: %s in %s answered %s", type(exc).__name__, type(view).__name__,
                       getattr(translated, "status_code", "?"))
    return drf_exception_handler(translated, context)


def as_api_error(exc: Exception) -> Exception:
    if isinstance(exc, (ProtectedError, RestrictedError)):
        return still_referenced(exc, "it cannot be deleted.")
    if isinstance(exc, IntegrityError):
        return Conflict("This conflicts with an existing record: a value that must be unique is already taken.")
    if isinstance(exc, DataError):
        return exceptions.ValidationError({"detail": "A value is out of range or cannot be stored."})
    if isinstance(exc, DjangoValidationError):
        return exceptions.ValidationError(serializers.as_serializer_error(exc))
    return exc


@csrf_exempt  # a POST to no view at all is a 404, not a CSRF failure's HTML page
def not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
    """Any other path under /api/: DRF's 404 envelope rather than Django's HTML page."""
    return JsonResponse({"detail": "Not found."}, status=404)
