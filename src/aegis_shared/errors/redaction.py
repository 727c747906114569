"""Database URLs in error messages and logs, without their passwords.

Every message that shows a URL goes through :func:`mask_url`, and every URL given as text
is parsed by :func:`parse_url`, whose error shows the masked URL only (and chains nothing
that holds the original).
"""

from __future__ import annotations

import re

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from aegis_shared.errors.exceptions import ConfigurationError

MASK = "***"

URL_EXAMPLE = "postgresql+asyncpg://user:password@localhost:5432/dbname"

# Passwords carried as query parameters (``?password=...``) by some drivers' URLs.
_QUERY_SECRET = re.compile(r"(?i)([?&](?:password|passwd|pwd)=)[^&#]*")


def mask_url(url: str | URL) -> str:
    """``url`` with its password replaced by ``***``, whether or not it parses.

    ``postgresql://user:secret@host/db`` becomes ``postgresql://user:***@host/db``.

    Written by hand because SQLAlchemy hides passwords only of URLs it could parse, and the
    URLs that reach an error message are often the ones it could not: a password with an
    unencoded ``@``, ``/`` or ``:`` is the usual reason. The credentials are therefore taken
    as everything up to the *last* ``@``, which masks too much rather than too little.
    """
    text = url.render_as_string(hide_password=True) if isinstance(url, URL) else str(url)
    scheme_end = text.find("://")
    start = scheme_end + 3 if scheme_end >= 0 else 0
    at = text.rfind("@")
    if at > start:
        user, colon, _ = text[start:at].partition(":")
        if colon:
            text = f"{text[:start]}{user}:{MASK}{text[at:]}"
    return _QUERY_SECRET.sub(rf"\g<1>{MASK}", text)


# A URL with credentials inside free text: scheme://, then no blanks or quotes.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def mask_urls(text: str) -> str:
    """``text`` with every URL in it passed through :func:`mask_url`.

    For messages that may quote a URL somewhere (a driver's error text, a log line), where
    :func:`mask_url` alone would need the URL cut out first.
    """
    return _URL_IN_TEXT.sub(lambda found: mask_url(found.group(0)), text)


def parse_url(url: str | URL, source: str = "DATABASE_URL") -> URL:
    """Parse ``url``; if it is not a URL, raise :class:`ConfigurationError` naming
    ``source`` (where the value came from) and showing the URL masked.

    A server URL whose database name holds an ``@`` is refused too: that is a password
    with an unencoded ``@`` or ``/``, which SQLAlchemy parses wrongly (the first ``@`` ends
    the password, the rest lands in the host and database name, unmasked).
    """
    if isinstance(url, URL):
        return url
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        parsed = None
    misparsed = (
        parsed is not None
        and parsed.get_backend_name() != "sqlite"  # a file path may hold an "@"
        and "@" in (parsed.database or "")
    )
    if parsed is not None and not misparsed:
        return parsed
    # Raised outside any except block so that nothing chains SQLAlchemy's error, whose
    # message (in 2.0) repeats the URL with its password.
    raise ConfigurationError(
        f"{source} {mask_url(url)!r} is not a database URL; expected "
        f"dialect+driver://user:password@host:port/dbname, for example {URL_EXAMPLE} "
        "(percent-encode @, :, / and % in the password: urllib.parse.quote(password, safe=''))"
    )


__all__ = ["MASK", "URL_EXAMPLE", "mask_url", "mask_urls", "parse_url"]
