"""``get_session`` and ``get_background_session``: the FastAPI dependencies of seed 000.

They are plain async generators, so they work with ``Depends`` and need no FastAPI import.

Commit policy: a session from ``get_session`` is never committed for you. Call
``await session.commit()`` in the handler (or use a ``UnitOfWork``); anything left
uncommitted, and everything when the handler raises, is rolled back when the dependency
ends. With :class:`aegis_shared.web.DatabaseSessionMiddleware` installed, ``get_session``
yields the request's one shared session instead, and the middleware commits it before the
response starts when the status is below 400.

FastAPI runs a dependency's exit code after the response is sent (the default
``Depends(get_session)``, ``scope="request"``). From FastAPI 0.121,
``Depends(get_session, scope="function")`` ends the session as soon as the handler returns.
For a generator endpoint (``fastapi.sse``) that is when the generator is made: the session
is closed inside it, and a default-scope one is held for the whole stream. Take the
function-scoped session in a plain ``async def`` check dependency instead, and a session
per event inside the stream (docs/guide.md, "FastAPI dependency scope").
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from aegis_shared.database.registry import get_database
from aegis_shared.database.request_scope import current_request_session
from aegis_shared.database.session import AegisSession, rollback_quietly


@asynccontextmanager
async def _own_session(factory: async_sessionmaker[AegisSession]) -> AsyncIterator[AegisSession]:
    session = factory()
    try:
        yield session
    except BaseException:
        await rollback_quietly(session)
        raise
    finally:
        # close() rolls back whatever the handler did not commit.
        await session.close()


async def get_session() -> AsyncGenerator[AsyncSession, None]:
    """Yield a session for one request from the default manager's main pool.

    FastAPI caches a dependency per request, so every ``Depends(get_session)`` of one
    request gets the same session.
    """
    # The body of _own_session written out rather than entered as a context manager:
    # FastAPI already wraps every yield dependency in two context managers of its own,
    # and on the hottest dependency of an app a third is a measurable share of a request.
    holder = current_request_session.get()
    session = get_database().session_factory() if holder is None else holder.get()
    try:
        yield session
    except BaseException:
        await rollback_quietly(session)
        raise
    finally:
        if holder is None:
            # Its own session (no DatabaseSessionMiddleware): close() rolls back whatever
            # the handler did not commit. The middleware closes the request's session.
            await session.close()


async def get_background_session() -> AsyncGenerator[AsyncSession, None]:
    """Yield a session from the background pool (separate from request traffic)."""
    async with _own_session(get_database().background_session_factory) as session:
        yield session
