"""Security headers on every response: a Content-Security-Policy without
``'unsafe-inline'`` for scripts (the pages' JavaScript is one file under /static; no
inline script, no inline event handler), no framing, no MIME sniffing, no referrer to
other sites.

A route may set its own ``Content-Security-Policy`` (``/docs`` allows its one inline
script by hash); this middleware then leaves it as it is.
"""

from __future__ import annotations

from aegis_shared.web.asgi import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CSP", "SecurityHeadersMiddleware"]

#: Everything from this origin only; scripts and styles from files, never inline.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)

_HEADERS: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]


class SecurityHeadersMiddleware:
    """Pure ASGI: adds the headers above to every HTTP response that lacks them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app, adding the headers to its response's start."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                if b"content-security-policy" not in present:
                    headers.append((b"content-security-policy", CSP.encode()))
                headers += [(name, value) for name, value in _HEADERS if name not in present]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_wrapper)
