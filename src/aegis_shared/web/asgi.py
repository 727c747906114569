"""The ASGI types the pure-ASGI middlewares of this package share (no Starlette needed)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def cookie_values(scope: Scope, cookie_name: str) -> list[str]:
    """Every value of the cookie ``cookie_name`` in the request's Cookie headers, in order
    (a value in a pair of double quotes without them).

    Parsed by hand, like browsers: ``http.cookies.SimpleCookie`` stops at the first
    cookie it dislikes, which would hide ours behind another site's junk, and
    Starlette's ``cookie_parser`` keeps only the last value of a name, which may be a
    sibling subdomain's.
    """
    values: list[str] = []
    for name, header in scope.get("headers", ()):
        if name.lower() != b"cookie":
            continue
        for chunk in header.decode("latin-1").split(";"):
            key, sep, value = chunk.partition("=")
            if sep and key.strip() == cookie_name:
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                values.append(value)
    return values
