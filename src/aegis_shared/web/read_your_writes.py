"""Read-your-writes across requests: a client's next reads see what its last write did.

``ReadYourWritesMiddleware`` reads the client's token (the ``aegis_read_after`` cookie, or
the ``X-Aegis-Read-After`` header for API clients) into the request's context, so the
request's read-only sessions go to a replica only once it has that client's last write
(:mod:`aegis_shared.database.replicas`). When the request itself committed a write, the
response carries the new token back: cookie and header.

The token is the time of the client's last write (milliseconds), nothing the database
said; a forged one can only keep its own sender's reads on the primary a little longer.
Pure ASGI, like the other middlewares of :mod:`aegis_shared.web`, to act at the exact
moment the response starts.
"""

from __future__ import annotations

import math

from aegis_shared.database.manager import DatabaseManager
from aegis_shared.database.replicas import (
    CLOCK_SKEW,
    format_token,
    parse_token,
    read_after,
    require_read_after,
)
from aegis_shared.web.asgi import ASGIApp, Message, Receive, Scope, Send, cookie_values

COOKIE_NAME = "aegis_read_after"
HEADER_NAME = "x-aegis-read-after"


class ReadYourWritesMiddleware:
    """Carry each client's read-your-writes token between its requests.

    >>> app.add_middleware(ReadYourWritesMiddleware, db=db)

    Add it last (outermost), so that the request's commit (the session middleware's, at
    the response start) has happened when it writes the token. The cookie lives as long
    as a replica may lag (``db``'s ``replica_max_lag``, or ``max_age`` seconds): after
    that every healthy replica has the write anyway. ``secure`` marks the cookie Secure
    (keep it, except for local plain http). Given a ``db`` without replicas it does
    nothing, so an app may add it before it has any.
    """

    def __init__(
        self,
        app: ASGIApp,
        db: DatabaseManager | None = None,
        *,
        max_age: float | None = None,
        secure: bool = True,
    ) -> None:
        self.app = app
        if max_age is None:
            max_age = db.replica_max_lag if db is not None else 5.0
        if isinstance(max_age, bool) or not isinstance(max_age, int | float) or max_age <= 0:
            raise ValueError(f"max_age must be a number of seconds > 0, got {max_age!r}")
        self.max_age = math.ceil(max_age + CLOCK_SKEW) + 1
        self.secure = secure
        # With a manager that has no replicas every read is on the primary: no token to
        # carry, no cookie to set.
        self.enabled = db is None or db.has_replicas
        self.db = db

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.enabled:
            await self.app(scope, receive, send)
            return
        if self.db is not None:
            self.db.start_replica_monitor()
        incoming = _token_of(scope)
        require_read_after(incoming)
        before = read_after()

        async def send_token(message: Message) -> None:
            if message["type"] == "http.response.start":
                now = read_after()
                if now is not None and (before is None or now > before):
                    token = format_token(now)
                    headers = list(message.get("headers", []))
                    headers.append((b"set-cookie", self._cookie(token).encode("latin-1")))
                    headers.append((HEADER_NAME.encode(), token.encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_token)

    def _cookie(self, token: str) -> str:
        parts = [
            f"{COOKIE_NAME}={token}",
            "Path=/",
            f"Max-Age={self.max_age}",
            "HttpOnly",
            "SameSite=Lax",
        ]
        if self.secure:
            parts.append("Secure")
        return "; ".join(parts)


def _token_of(scope: Scope) -> float | None:
    """The header's token if sent (API clients), else the first well-formed cookie's."""
    for name, value in scope.get("headers", ()):
        if name.lower() == HEADER_NAME.encode():
            return parse_token(value.decode("latin-1").strip())
    for value in cookie_values(scope, COOKIE_NAME):
        token = parse_token(value)
        if token is not None:
            return token
    return None
