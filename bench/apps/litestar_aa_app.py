"""Advanced Alchemy on Litestar for the ``litestar`` scenario, as its Litestar docs show.

* ``app``: ``SQLAlchemyPlugin(SQLAlchemyAsyncConfig(..., before_send_handler="autocommit"))``,
  a repository service from ``providers.create_service_provider`` and
  ``items_service.get(id)``; the plugin's default exception handler turns its
  ``NotFoundError`` into a 404.
* ``sessions_app``: the same plugin and Litestar's ``SessionMiddleware`` with its
  ``SQLAlchemyAsyncSessionBackend`` (``ServerSideSessionConfig(max_age=24 h)``, the
  :class:`~bench.aa_session_models.AASession` table), mounted as its docs say
  (``DefineMiddleware(SessionMiddleware, backend=backend)``). ``POST /session-write`` and
  ``GET /session-read`` as in ours (``request.session``).

Both with a pool of 10 on the benchmark database. The scenario creates the session table.
"""

from __future__ import annotations

from typing import Any

from advanced_alchemy.extensions.litestar import (
    AsyncSessionConfig,
    EngineConfig,
    SQLAlchemyAsyncConfig,
    SQLAlchemyPlugin,
    providers,
)
from advanced_alchemy.extensions.litestar.session import SQLAlchemyAsyncSessionBackend
from litestar import Litestar, Request, get, post
from litestar.di import NamedDependency, Provide
from litestar.middleware import DefineMiddleware
from litestar.middleware.session import SessionMiddleware
from litestar.middleware.session.server_side import ServerSideSessionConfig
from litestar.params import FromPath, JSONBody

from bench.aa_models import AAItemService
from bench.aa_session_models import AASession
from bench.common import PG_URL
from bench.models import item_json

LIFETIME_S = 24 * 3600


def _config() -> SQLAlchemyAsyncConfig:
    return SQLAlchemyAsyncConfig(
        connection_string=PG_URL,
        engine_config=EngineConfig(pool_size=10, max_overflow=0),
        session_config=AsyncSessionConfig(expire_on_commit=False),
        before_send_handler="autocommit",
    )


@get(
    "/items/{item_id:int}",
    dependencies={"items_service": Provide(providers.create_service_provider(AAItemService))},
)
async def get_item(
    item_id: FromPath[int], items_service: NamedDependency[AAItemService]
) -> dict[str, object]:
    """The item as JSON (the same body as ours)."""
    return item_json(await items_service.get(item_id))


@get("/session-read")
async def session_read(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """The visitor's session data (the middleware loaded it before the handler)."""
    return dict(request.session)


@post("/session-write")
async def session_write(
    data: JSONBody[dict[str, Any]], request: Request[Any, Any, Any]
) -> dict[str, Any]:
    """Put ``data`` into the session (stored when the response starts)."""
    request.set_session({**request.session, **data})
    return dict(request.session)


app = Litestar(route_handlers=[get_item], plugins=[SQLAlchemyPlugin(config=_config())])

_sessions_config = _config()
sessions_app = Litestar(
    route_handlers=[session_read, session_write],
    plugins=[SQLAlchemyPlugin(config=_sessions_config)],
    middleware=[
        DefineMiddleware(
            SessionMiddleware,
            backend=SQLAlchemyAsyncSessionBackend(
                config=ServerSideSessionConfig(max_age=LIFETIME_S),
                alchemy_config=_sessions_config,
                model=AASession,
            ),
        )
    ],
)
