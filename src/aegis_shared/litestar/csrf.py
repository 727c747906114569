"""The CSRF check on Litestar, without the session cookie: the same policy and defaults as
:class:`aegis_shared.web.CSRFMiddleware` (it is that pure-ASGI middleware).

With ``AegisPlugin(sessions=store)`` the check is already on (the session middleware runs
the app behind it); add this only for an app that uses other cookies::

    app = Litestar(route_handlers=[...], middleware=[csrf_middleware()])

Unsafe requests (not GET, HEAD, OPTIONS, TRACE) that a browser marks as cross-site are
refused with ``403 {"error": "csrf", ...}``; with ``tokens=CSRFTokens(secret)`` they must
also carry the token of :func:`csrf_token` (``X-CSRF-Token`` header or ``csrf_token`` field).
"""

from __future__ import annotations

from collections.abc import Sequence

from litestar.middleware import DefineMiddleware

from aegis_shared.litestar.asgi import define_middleware
from aegis_shared.web.csrf import CSRFMiddleware, CSRFTokens, csrf_token


def csrf_middleware(
    *, trusted_origins: Sequence[str] = (), tokens: CSRFTokens | None = None
) -> DefineMiddleware:
    """The CSRF check as a Litestar middleware: ``trusted_origins`` are other origins
    allowed to send unsafe requests (exact ``scheme://host[:port]``); ``tokens`` turns on
    form tokens. A bad origin raises ``ValueError`` when the app is built."""
    return define_middleware(CSRFMiddleware, trusted_origins=trusted_origins, tokens=tokens)


__all__ = ["csrf_middleware", "csrf_token"]
