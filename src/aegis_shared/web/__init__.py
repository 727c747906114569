"""FastAPI / Starlette glue: the per-request database session, the session cookie, the
CSRF defence, read-your-writes across requests, error handlers and Server-Sent Events
from the event log.

Needs the ``fastapi`` extra (``pip install aegis-shared[fastapi]``) for the error handlers,
``current_session`` and the SSE helpers; the database session middleware, the session
cookie middleware and the CSRF defence are plain ASGI (Litestar uses them too, see
:mod:`aegis_shared.litestar`).
"""

from typing import TYPE_CHECKING

from aegis_shared.web.csrf import (
    CSRFMiddleware,
    CSRFPolicy,
    CSRFTokens,
    csrf_token,
    send_refusal,
    send_websocket_refusal,
)
from aegis_shared.web.middleware import DatabaseSessionMiddleware
from aegis_shared.web.read_your_writes import ReadYourWritesMiddleware
from aegis_shared.web.session_cookie import HttpSession, SessionMiddleware

if TYPE_CHECKING:
    from aegis_shared.web.errors import install_error_handlers
    from aegis_shared.web.events import event_stream, last_event_id
    from aegis_shared.web.sessions import current_session

__all__ = [
    "CSRFMiddleware",
    "CSRFPolicy",
    "CSRFTokens",
    "DatabaseSessionMiddleware",
    "HttpSession",
    "ReadYourWritesMiddleware",
    "SessionMiddleware",
    "csrf_token",
    "current_session",
    "event_stream",
    "install_error_handlers",
    "last_event_id",
    "send_refusal",
    "send_websocket_refusal",
]

_NEEDS_STARLETTE = {
    "install_error_handlers": "aegis_shared.web.errors",
    "current_session": "aegis_shared.web.sessions",
    "event_stream": "aegis_shared.web.events",
    "last_event_id": "aegis_shared.web.events",
}


def __getattr__(name: str) -> object:
    # Imported lazily so the database middleware works without Starlette installed.
    module = _NEEDS_STARLETTE.get(name)
    if module is None:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(module), name)
