"""Ours on Litestar for the ``litestar`` scenario, as the guide's "Litestar" section wires it.

* ``app``: ``GET /items/{id}`` with ``AegisPlugin(db)``, the request's ``db_session`` and
  ``ItemRepository(db_session).get_one(id)``; a missing id is our 404 body.
* ``sessions_app``: ``AegisPlugin(db, sessions=store)``, our session cookie middleware on
  the :class:`~aegis_shared.sessions.SessionStore` (default ``touch_interval`` of 5
  minutes). ``POST /session-write`` puts the JSON body into the visitor's session and
  ``GET /session-read`` answers the session's data (``{}`` for a new visitor).

Both with a pool of 10 on the benchmark database. The scenario creates the session table.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from litestar import Litestar, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from sqlalchemy.ext.asyncio import AsyncSession

from aegis_shared.database import DatabaseManager
from aegis_shared.litestar import AegisPlugin, SessionOptions
from aegis_shared.sessions import SessionStore
from aegis_shared.web import HttpSession
from bench.common import PG_URL
from bench.models import ItemRepository, item_json
from bench.session_models import BenchSession

#: The sessions' idle lifetime, as Advanced Alchemy's app sets its ``max_age``.
LIFETIME = timedelta(hours=24)


@get("/items/{item_id:int}")
async def get_item(
    item_id: FromPath[int], db_session: NamedDependency[AsyncSession]
) -> dict[str, object]:
    """The item as JSON; ``NotFoundError`` becomes a 404 through the plugin's handlers."""
    return item_json(await ItemRepository(db_session).get_one(item_id))


@get("/session-read")
async def session_read(http_session: NamedDependency[HttpSession]) -> dict[str, Any]:
    """The visitor's session data: one SELECT by the id's digest, no write."""
    return dict(http_session)


@post("/session-write")
async def session_write(
    data: JSONBody[dict[str, Any]], http_session: NamedDependency[HttpSession]
) -> dict[str, Any]:
    """Put ``data`` into the session (created now for a new visitor, saved at the
    response's start)."""
    http_session.update(data)
    return dict(http_session)


app = Litestar(
    route_handlers=[get_item],
    plugins=[AegisPlugin(DatabaseManager(PG_URL, pool_size=10, max_overflow=0))],
)

_sessions_db = DatabaseManager(PG_URL, pool_size=10, max_overflow=0)
sessions_app = Litestar(
    route_handlers=[session_read, session_write],
    plugins=[
        AegisPlugin(
            _sessions_db,
            sessions=SessionStore(_sessions_db, BenchSession, idle_timeout=LIFETIME),
            # The load generator talks plain http on loopback: no Secure, no __Host- prefix,
            # so the cookie is "session" as on Advanced Alchemy's app.
            session_options=SessionOptions(secure=False),
        )
    ],
)
