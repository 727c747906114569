"""The session of the current request, shared by every consumer in that request.

The web layer (:class:`aegis_shared.web.DatabaseSessionMiddleware`) opens a
:class:`RequestSession` per request, puts it in the ASGI scope's state and in a context
variable; ``get_session`` and ``provide_services(connection=request)`` then use that one
session instead of opening their own. It lives here, below the web layer, so the database
layer can find it without importing Starlette.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from aegis_shared.database.manager import DatabaseManager
from aegis_shared.database.session import AegisSession, claim_commit, rollback_quietly

STATE_KEY = "aegis_shared.request_session"


class RequestSession:
    """A lazily opened session bound to one request; the middleware ends it."""

    def __init__(self, db: DatabaseManager, *, commits: bool = True) -> None:
        """``commits``: the middleware commits the session at the end of the request, so it
        claims the commit (``commit_on_success=False`` leaves it to the handler)."""
        self._db = db
        self._commits = commits
        self._session: AegisSession | None = None
        self.finished = False

    @property
    def opened(self) -> bool:
        """True once some code of the request asked for the session."""
        return self._session is not None

    def get(self) -> AegisSession:
        """The request's session, opened on first use (no connection is taken until a
        statement runs)."""
        if self.finished:
            raise RuntimeError(
                "The request's database session was already committed and released when the "
                "response started; code that runs while the response streams (SSE, "
                "StreamingResponse) must open its own: async with UnitOfWork() as uow"
            )
        if self._session is None:
            self._session = self._db.session_factory()
            if self._commits:
                # The middleware commits at the end of the request (status < 400): a
                # transaction() block or a wrapping unit of work inside it must not.
                claim_commit(self._session, "DatabaseSessionMiddleware")
        return self._session

    async def finish(self, *, commit: bool) -> None:
        """Commit (if ``commit``) or roll back, then close and release the connection."""
        if self.finished:
            return
        self.finished = True
        session, self._session = self._session, None
        if session is None:
            return
        try:
            if commit:
                await session.commit()
            else:
                await rollback_quietly(session)
        finally:
            await session.close()


current_request_session: ContextVar[RequestSession | None] = ContextVar(
    "aegis_shared_request_session", default=None
)


def request_session_of(connection: Any) -> RequestSession:
    """The :class:`RequestSession` of a connection: a Starlette or Litestar ``Request`` /
    ``WebSocket`` / ``ASGIConnection``, or a raw ASGI scope."""
    scope = getattr(connection, "scope", connection)
    state = scope.get("state") if isinstance(scope, dict) else None
    holder = state.get(STATE_KEY) if isinstance(state, dict) else None
    if not isinstance(holder, RequestSession):
        holder = current_request_session.get()
    if holder is None:
        raise RuntimeError(
            "This connection has no request-scoped database session. Add "
            "aegis_shared.web.DatabaseSessionMiddleware to the app "
            "(app.add_middleware(DatabaseSessionMiddleware); on Litestar "
            "plugins=[aegis_shared.litestar.AegisPlugin()]), or pass session= instead."
        )
    return holder
