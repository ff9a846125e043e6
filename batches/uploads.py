"""Reading an upload (POST /v1/files, multipart/form-data) into a file on disk, with every bad input a 4xx.

Runs in a worker thread (the parse reads and writes up to TOLLGATE_FILE_MAX_BYTES): never on the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.core.files.uploadedfile import TemporaryUploadedFile
from django.core.files.uploadhandler import TemporaryFileUploadHandler
from django.http import HttpRequest
from django.http.multipartparser import MultiPartParser, MultiPartParserError

from proxy.errors import GatewayError, PayloadTooLarge

FILENAME_CHARS = 255  # File.filename's length
EXPIRY_SECONDS = (3600, 30 * 24 * 3600)  # OpenAI's bounds for expires_after[seconds]


class FileTooLarge(Exception):
    pass


class ExtraFile(Exception):
    pass


@dataclass
class Upload:
    purpose: str
    filename: str
    file: TemporaryUploadedFile
    size: int
    expires_after: timedelta | None


def too_large() -> PayloadTooLarge:
    return PayloadTooLarge(f"The file is larger than {settings.TOLLGATE_FILE_MAX_BYTES} bytes.", param="file")


class SpoolToDisk(TemporaryFileUploadHandler):
    """Django's disk handler, for one file part named ``file``, refusing more than TOLLGATE_FILE_MAX_BYTES."""

    def __init__(self, request: HttpRequest) -> None:
        super().__init__(request)
        self.limit = settings.TOLLGATE_FILE_MAX_BYTES
        self.original_name = ""

    def new_file(self, field_name: str, file_name: str, *args: Any, **kwargs: Any) -> None:
        if self.original_name or field_name != "file":
            raise ExtraFile()
        self.original_name = file_name[:FILENAME_CHARS]
        # Django names the temporary file after the client's extension, which may be too long for the file system.
        super().new_file(field_name, "upload", *args, **kwargs)

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        if start + len(raw_data) > self.limit:
            raise FileTooLarge()  # stop writing now: the parser closes the temporary file
        return super().receive_data_chunk(raw_data, start)


def parse(request: HttpRequest, handler: SpoolToDisk) -> tuple[Any, Any]:
    """Return the form's fields and files. Raises a 400 or 413 GatewayError."""
    try:
        return MultiPartParser(request.META, request, [handler], request.encoding).parse()
    except FileTooLarge:
        raise too_large() from None
    except ExtraFile:
        raise GatewayError("Send exactly one file, in the field 'file'.", param="file", code="invalid_value") from None
    except RequestDataTooBig:
        raise PayloadTooLarge("The form fields other than 'file' are too large.") from None
    except (MultiPartParserError, SuspiciousOperation, ValueError) as e:
        # A missing or bad boundary, an unreadable part, too many fields: say so without echoing the input.
        raise GatewayError(f"The multipart/form-data body could not be parsed ({type(e).__name__}).",
                           code="invalid_request") from None


def read_upload(request: HttpRequest) -> Upload:
    """Parse the request's multipart body. Raises a 400 or 413 GatewayError; the caller closes Upload.file."""
    if request.content_type != "multipart/form-data":
        raise GatewayError("Send the file as multipart/form-data, with the fields 'file' and 'purpose'.",
                           code="invalid_request")
    if "CONTENT_LENGTH" not in request.META and hasattr(request, "scope"):
        # Sent chunked: Django's parser reads nothing without a length, so give it the spooled body's.
        stream = request._stream  # type: ignore[attr-defined]
        request.META["CONTENT_LENGTH"] = str(stream.seek(0, 2))
        stream.seek(0)
    handler = SpoolToDisk(request)
    try:
        fields, files = parse(request, handler)
    except BaseException:
        if getattr(handler, "file", None) is not None:
            handler.file.close()  # the part being written when parsing stopped; finished ones the parser closes
        raise
    upload = files.get("file")
    try:
        purpose = fields.get("purpose")
        if upload is None:
            if "file" in fields:
                raise GatewayError("'file' must be a file part (with a filename), not a text field.", param="file",
                                   code="invalid_value")
            raise GatewayError("Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
        if purpose is None:
            raise GatewayError("Missing required parameter: 'purpose'.", param="purpose",
                               code="missing_required_parameter")
        if purpose != "batch":
            raise GatewayError("Invalid value for 'purpose': Tollgate accepts only 'batch'.", param="purpose",
                               code="invalid_value")
        if upload.size == 0:
            raise GatewayError("The file is empty.", param="file", code="invalid_value")
        expires_after = expiry(fields)
    except GatewayError:
        if upload is not None:
            upload.close()
        raise
    return Upload(purpose=purpose, filename=handler.original_name, file=upload, size=upload.size,
                  expires_after=expires_after)


def expiry(fields: Any) -> timedelta | None:
    """The form's expires_after (the SDK sends expires_after[anchor] and [seconds]), checked. Raises a 400."""
    anchor, seconds = fields.get("expires_after[anchor]"), fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise GatewayError("'expires_after.anchor' must be 'created_at'.", param="expires_after.anchor",
                           code="invalid_value")
    low, high = EXPIRY_SECONDS
    if not (seconds is not None and seconds.isascii() and seconds.isdigit() and len(seconds) <= 8
            and low <= int(seconds) <= high):
        raise GatewayError(f"'expires_after.seconds' must be an integer between {low} and {high}.",
                           param="expires_after.seconds", code="invalid_value")
    return timedelta(seconds=int(seconds))
