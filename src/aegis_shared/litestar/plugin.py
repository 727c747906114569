"""``AegisPlugin``: the database, its per-request session, our error bodies and, when
asked, server-side sessions, on a Litestar app.

>>> app = Litestar(route_handlers=[...], plugins=[AegisPlugin()])            # from Settings
>>> app = Litestar(route_handlers=[...], plugins=[AegisPlugin(db=db, sessions=store)])

What it adds to the app:

- a lifespan that makes the manager the default on start-up (``DatabaseManager.from_settings``
  unless ``db`` is given) and closes it on shutdown;
- :class:`~aegis_shared.web.DatabaseSessionMiddleware` (pure ASGI), the outermost of the
  app's own middleware, so one lazily opened session serves the whole request: the
  ``db_session`` dependency, every dependency that asks for it, guards and middleware
  through ``provide_services(..., connection=connection)``. It is committed when the
  response starts if the status is below 400, else rolled back, and closed before the
  body goes out (a streaming response pins no connection). A commit that fails answers
  500 with our safe body instead of the handler's response: never a 2xx for work that
  was not saved;
- the exception handlers of :func:`~aegis_shared.litestar.errors.exception_handlers`
  (an app's own handler for the same class wins);
- with ``sessions=store``, the session cookie middleware outside the database session,
  with the CSRF check, and the ``http_session`` dependency.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from litestar.di import Provide
from litestar.plugins import InitPluginProtocol
from sqlalchemy.ext.asyncio import AsyncSession

from aegis_shared.database.manager import DatabaseManager
from aegis_shared.database.registry import configure_database, peek_database, reset_database
from aegis_shared.database.session import AegisSession
from aegis_shared.errors.exceptions import DatabaseError
from aegis_shared.litestar.asgi import define_middleware
from aegis_shared.litestar.dependencies import provide_db_session, provide_http_session
from aegis_shared.litestar.errors import exception_handlers
from aegis_shared.litestar.sessions import SessionOptions, session_middleware
from aegis_shared.sessions.store import SessionStore
from aegis_shared.web.middleware import DatabaseSessionMiddleware
from aegis_shared.web.session_cookie import HttpSession

if TYPE_CHECKING:
    from litestar import Litestar
    from litestar.config.app import AppConfig

    from aegis_shared.config import Settings


class AegisPlugin(InitPluginProtocol):
    """Wire aegis-shared into a Litestar app (see the module's docstring).

    ``db``: the manager to use (default: one built from ``settings``, or from the
    environment, at start-up); ``close_on_shutdown=False`` leaves a given manager open.
    ``commit_on_success=False``: the request's session is never committed for you
    (handlers call ``await db_session.commit()``). ``session_dependency_key`` names the
    session's dependency (``db_session``). ``error_handlers=False`` installs no handlers;
    ``statuses`` and ``expose_details`` as for ``exception_handlers``. ``sessions``: a
    :class:`SessionStore` for server-side sessions, ``session_options`` its cookie and
    CSRF options (:class:`~aegis_shared.litestar.SessionOptions`).
    """

    __slots__ = (
        "_close_on_shutdown",
        "_commit_on_success",
        "_db",
        "_error_handlers",
        "_expose_details",
        "_session_dependency_key",
        "_session_options",
        "_sessions",
        "_settings",
        "_statuses",
    )

    def __init__(
        self,
        db: DatabaseManager | None = None,
        *,
        settings: Settings | None = None,
        close_on_shutdown: bool = True,
        commit_on_success: bool = True,
        session_dependency_key: str = "db_session",
        error_handlers: bool = True,
        statuses: Mapping[type[DatabaseError], int] | None = None,
        expose_details: bool = False,
        sessions: SessionStore | None = None,
        session_options: SessionOptions | None = None,
    ) -> None:
        if db is not None and settings is not None:
            raise ValueError(
                "AegisPlugin takes a DatabaseManager or Settings, not both: pass db= to use "
                "a manager you made, or settings= to have one built at start-up"
            )
        if sessions is None and session_options:
            raise ValueError(
                "session_options configure the session cookie, which needs sessions="
                "SessionStore(db, YourSessionModel); pass it, or drop session_options"
            )
        self._db = db
        self._settings = settings
        self._close_on_shutdown = close_on_shutdown
        self._commit_on_success = commit_on_success
        self._session_dependency_key = session_dependency_key
        self._error_handlers = error_handlers
        self._statuses = statuses
        self._expose_details = expose_details
        self._sessions = sessions
        self._session_options = session_options or SessionOptions()

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        """Add the lifespan, middleware, dependencies and exception handlers to the app."""
        app_config.lifespan.append(self._lifespan)
        ours: list[Any] = [
            define_middleware(
                DatabaseSessionMiddleware,
                db=self._db,
                commit_on_success=self._commit_on_success,
            )
        ]
        dependencies: dict[str, Provide] = {
            self._session_dependency_key: Provide(provide_db_session, sync_to_thread=False)
        }
        if self._sessions is not None:
            # Outside the database session: a failed request's transaction ends before the
            # session row it started is deleted (on SQLite the other way round would wait
            # on its own write lock).
            ours.insert(0, session_middleware(self._sessions, **self._session_options))
            dependencies["http_session"] = Provide(provide_http_session)
        # First, so the app's own middleware (which may use provide_services(connection=))
        # runs inside the request's session.
        app_config.middleware[:0] = ours
        for key, provider in dependencies.items():
            app_config.dependencies.setdefault(key, provider)
        if self._error_handlers:
            handlers = exception_handlers(
                statuses=self._statuses, expose_details=self._expose_details
            )
            for error, handler in handlers.items():
                app_config.exception_handlers.setdefault(error, handler)
        app_config.signature_namespace.update(
            {"AsyncSession": AsyncSession, "AegisSession": AegisSession, "HttpSession": HttpSession}
        )
        return app_config

    @asynccontextmanager
    async def _lifespan(self, app: Litestar) -> AsyncIterator[None]:
        db = configure_database(self._db, settings=self._settings)
        try:
            yield
        finally:
            # With close_on_shutdown=False the manager's owner ends it, and it stays the
            # default until then (code after the app, a test, may still use it).
            if self._close_on_shutdown:
                if peek_database() is db:
                    reset_database()
                await db.close()
