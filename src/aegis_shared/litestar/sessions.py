"""Server-side sessions on Litestar: our :class:`~aegis_shared.sessions.SessionStore` behind
the session cookie middleware that FastAPI apps use (pure ASGI, so the same code runs).

What the store and the middleware do, on every framework: ids of 256 bits of which the
table keeps only the SHA-256 digest, the sliding expiry written at most once per
``touch_interval``, ``rotate()`` on login (one winner among concurrent logins),
``invalidate()`` on logout, cleanup in short batches (``sweep_sessions``), changes saved
only when the status is below 400, and the cookie ``__Host-session`` with ``Secure``,
``HttpOnly``, ``SameSite=Lax`` and ``Path=/``. The CSRF check comes with it unless
``csrf=False``. Litestar's own session middleware cannot do this: its backends see one
opaque blob per request, so they cannot rotate an id, throttle the touch, or keep
child rows.

>>> app = Litestar(route_handlers=[...], plugins=[AegisPlugin(sessions=store)])
>>> @post("/login")
... async def login(http_session: HttpSession) -> None:
...     http_session["user"] = "ada"
...     if not await http_session.rotate(): ...
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypedDict, Unpack

from litestar.middleware import DefineMiddleware

from aegis_shared.litestar.asgi import define_middleware
from aegis_shared.sessions.store import SessionStore
from aegis_shared.web.csrf import CSRFTokens
from aegis_shared.web.session_cookie import SessionMiddleware


class SessionOptions(TypedDict, total=False):
    """The cookie and CSRF options of :class:`~aegis_shared.web.SessionMiddleware`; every
    one is optional and its default is that middleware's (``__Host-session``, ``Secure``,
    ``SameSite=Lax``, the CSRF check on)."""

    cookie_name: str
    same_site: Literal["lax", "strict"]
    host_prefix: bool | None
    secure: bool
    csrf: bool
    trusted_origins: Sequence[str]
    csrf_tokens: CSRFTokens | None


def session_middleware(store: SessionStore, **options: Unpack[SessionOptions]) -> DefineMiddleware:
    """The session cookie middleware for ``store`` as a Litestar middleware (``options``:
    :class:`SessionOptions`). Bad options raise when the app is built, with the reason.

    :class:`~aegis_shared.litestar.AegisPlugin` (``sessions=store``) adds it in the right
    place, outside the request's database session, so a failed request's transaction
    ends before the session it started is deleted again; add it by hand only without
    the plugin's database session.
    """
    if not isinstance(store, SessionStore):
        raise TypeError(f"session_middleware needs a SessionStore, got {type(store).__name__}")
    return define_middleware(SessionMiddleware, store=store, **options)
