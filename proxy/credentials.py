"""Provider credentials at rest: Fernet-encrypted under TOLLGATE_CREDENTIALS_KEY (or SECRET_KEY)."""

from __future__ import annotations

import base64
import hashlib
from functools import cache

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings


@cache
def _fernet(secret: str) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(b"tollgate-credentials:" + secret.encode()).digest()))


def encrypt(plaintext: str) -> str:
    return _fernet(settings.TOLLGATE_CREDENTIALS_KEY).encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    """Return the plaintext. Raises ValueError if the key that encrypted it is gone."""
    try:
        return _fernet(settings.TOLLGATE_CREDENTIALS_KEY).decrypt(token.encode()).decode()
    except InvalidToken:
        raise ValueError("stored credential cannot be decrypted with the current TOLLGATE_CREDENTIALS_KEY") from None
