"""The request-scoped values a Litestar handler, dependency or guard asks for.

``provide_db_session`` is the ``db_session`` dependency of
:class:`~aegis_shared.litestar.AegisPlugin`: the request's one session, the same object
that ``provide_services(..., connection=connection)`` and every other dependency of the
request get. It is opened lazily (no connection until a
statement runs) by :class:`~aegis_shared.web.DatabaseSessionMiddleware`, which the plugin
installs and which commits it when the response starts (status below 400) and closes it.
"""

from __future__ import annotations

from litestar.types import Scope

from aegis_shared.database.request_scope import request_session_of
from aegis_shared.database.session import AegisSession
from aegis_shared.web.session_cookie import HttpSession, request_http_session


def provide_db_session(scope: Scope) -> AegisSession:
    """The request's database session (the plugin's ``db_session`` dependency).

    Never commit or close it in a handler: the request boundary does (commit when the
    status is below 400, rollback otherwise). Raises ``RuntimeError`` when the app has no
    :class:`~aegis_shared.litestar.AegisPlugin`.
    """
    return request_session_of(scope).get()


async def provide_http_session(scope: Scope) -> HttpSession:
    """The request's server-side session, loaded (the plugin's ``http_session`` dependency,
    with ``AegisPlugin(sessions=store)``): one SELECT on the fast path, and only for
    requests whose handler asks for it."""
    session = request_http_session(scope)  # type: ignore[arg-type]
    if session is None:
        raise RuntimeError(
            "http_session needs the session middleware: pass AegisPlugin(sessions="
            "SessionStore(db, YourSessionModel)), or add "
            "aegis_shared.litestar.session_middleware(store) to the app's middleware"
        )
    await session.load()
    return session
