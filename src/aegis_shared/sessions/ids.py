"""Session ids: what the client holds, and the digest the database holds instead.

The raw id exists only in the client's cookie and in the response that sets it. The
table's primary key is its SHA-256 digest, so a leaked table (a backup, a replica, a
log of slow queries) holds nothing that can be presented as a session, and a lookup's
timing tells nothing about the raw ids stored. SHA-256 without a salt is enough here
because the id itself has 256 random bits: nothing about it can be guessed.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Final, TypeGuard

#: Random bytes per id: 256 bits, twice the 128 that make guessing hopeless.
ID_BYTES: Final = 32
#: Characters of an id: base64url of 32 bytes, without padding.
ID_LENGTH: Final = 43
#: Characters of a stored key: a SHA-256 hex digest.
KEY_LENGTH: Final = 64

_ID_SHAPE: Final = re.compile(rf"[A-Za-z0-9_-]{{{ID_LENGTH}}}")


def new_session_id() -> str:
    """A new session id: 256 bits from :mod:`secrets`, 43 URL- and cookie-safe characters."""
    return secrets.token_urlsafe(ID_BYTES)


def is_session_id(value: object) -> TypeGuard[str]:
    """True when ``value`` is shaped like an id from :func:`new_session_id`.

    Anything else (``None``, bytes, an empty or oversized cookie, other characters) is
    refused before it can cost a database query.
    """
    return isinstance(value, str) and _ID_SHAPE.fullmatch(value) is not None


def _digest(session_id: str) -> str:
    """The stored key of an id already checked by :func:`is_session_id`."""
    return hashlib.sha256(session_id.encode("ascii")).hexdigest()


def session_key(session_id: str) -> str:
    """The primary key stored for ``session_id``: its SHA-256 hex digest (64 characters)."""
    if not is_session_id(session_id):
        raise ValueError(
            f"{session_id!r} is not a session id; session ids come from new_session_id() "
            f"and are {ID_LENGTH} characters of A-Z, a-z, 0-9, '-' and '_'"
        )
    return _digest(session_id)
