"""The session cookie on FastAPI / Starlette: ``Depends(current_session)`` (seed 002).

``SessionMiddleware`` and ``HttpSession`` are plain ASGI and live in
:mod:`aegis_shared.web.session_cookie`; this module adds the FastAPI dependency.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection

from aegis_shared.web.session_cookie import (
    MAX_COOKIE_CANDIDATES,
    STATE_KEY,
    HttpSession,
    SessionMiddleware,
    request_http_session,
)

__all__ = [
    "MAX_COOKIE_CANDIDATES",
    "STATE_KEY",
    "HttpSession",
    "SessionMiddleware",
    "current_session",
]


async def current_session(request: HTTPConnection) -> HttpSession:
    """FastAPI dependency: the request's :class:`HttpSession`, loaded.

    >>> async def handler(session: HttpSession = Depends(current_session)): ...
    """
    session = request_http_session(request.scope)
    if session is None:
        raise RuntimeError(
            "current_session needs SessionMiddleware: add "
            "app.add_middleware(SessionMiddleware, store=SessionStore(db, YourSessionModel))"
        )
    await session.load()
    return session
