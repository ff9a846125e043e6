"""The outbox: where emails go when no SMTP server is configured (EMAIL_HOST unset, as on the embedded default).

Alert emails name a tenant's spend and password-reset emails carry a link that signs the user in, so they must
not land in the server's log (Django's console backend). Each email becomes one ``.eml`` file in
EMAIL_FILE_PATH, a directory only this user may enter, written with mode 0600 whatever the umask. Any mail
program opens them.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.mail import EmailMessage
from django.core.mail.backends.base import BaseEmailBackend

logger = logging.getLogger(__name__)


class OutboxBackend(BaseEmailBackend):
    def __init__(self, *, file_path: str | Path | None = None, fail_silently: bool = False, **kwargs: Any) -> None:
        super().__init__(fail_silently=fail_silently, **kwargs)
        self.directory = Path(file_path or settings.EMAIL_FILE_PATH)

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        sent = 0
        for message in email_messages:
            try:
                path = self.write(message)
            except OSError:
                if not self.fail_silently:
                    raise
                continue
            logger.info("email to %d recipient(s) written to %s", len(message.recipients()), path)
            sent += 1
        return sent

    def write(self, message: EmailMessage) -> Path:
        """Write one message as its own file. Returns the file's path."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)  # also when it existed: someone else's umask may have made it readable
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        path = self.directory / f"{stamp}-{secrets.token_hex(4)}.eml"
        # O_EXCL: never write into a file that someone else created (or linked) first.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(message.message().as_bytes(linesep="\n"))
        return path
