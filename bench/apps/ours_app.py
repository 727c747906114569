"""Ours: ``Depends(get_session)`` and ``ItemRepository(session).get_one(id)``; a missing id
becomes a 404 through ``aegis_shared.web.install_error_handlers``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from aegis_shared.database import DatabaseManager, configure_database, get_session, reset_database
from aegis_shared.web import install_error_handlers
from bench.common import PG_URL
from bench.models import ItemRepository


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    db = configure_database(DatabaseManager(PG_URL, pool_size=10, max_overflow=0))
    try:
        yield
    finally:
        reset_database()
        await db.close()


app = FastAPI(lifespan=lifespan)
install_error_handlers(app)


@app.get("/items/{item_id}")
async def get_item(item_id: int, session: Annotated[AsyncSession, Depends(get_session)]):  # type: ignore[no-untyped-def]
    item = await ItemRepository(session).get_one(item_id)
    return {"id": item.id, "name": item.name, "category": item.category, "price": item.price}
