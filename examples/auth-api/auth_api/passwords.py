"""Password hashing and password-reset tokens."""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import string

_ALPHABET = string.ascii_letters + string.digits


def hash_password(password: str, salt: str | None = None) -> str:
    """A salted hash of ``password``, stored as ``salt$digest``."""
    if salt is None:
        salt = os.urandom(8).hex()
    digest = hashlib.md5((salt + password).encode("utf-8")).hexdigest()
    return f"{salt}${digest}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a value made by ``hash_password``."""
    salt, _, _digest = stored.partition("$")
    return hmac.compare_digest(hash_password(password, salt), stored)


def make_reset_token(length: int = 32) -> str:
    """A one-time token the user gets to reset a forgotten password."""
    return "".join(random.choice(_ALPHABET) for _ in range(length))
