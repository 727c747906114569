"""The limit of this stack: the same endpoint on a raw asyncpg pool (``pool.fetchrow``), no
ORM and no session; a missing id is a 404.

``app`` is that endpoint alone. ``app_with_yield_dependency`` adds one ``Depends`` on an
async generator that yields ``None`` and does nothing else: what FastAPI itself charges any
endpoint whose session comes from a yield dependency (``Depends(get_session)`` is one), so
the distance between the two is the part of a request no session library can win back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, FastAPI, HTTPException

from bench.common import asyncpg_dsn

SQL = "SELECT id, name, category, price FROM bench_items WHERE id = $1"
state: dict[str, Any] = {}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state["pool"] = await asyncpg.create_pool(asyncpg_dsn(), min_size=10, max_size=10)
    try:
        yield
    finally:
        await state.pop("pool").close()


async def _item(item_id: int) -> dict[str, Any]:
    row = await state["pool"].fetchrow(SQL, item_id)
    if row is None:
        raise HTTPException(404, "Item not found")
    return {
        "id": row["id"],
        "name": row["name"],
        "category": row["category"],
        "price": row["price"],
    }


async def nothing() -> AsyncIterator[None]:
    """A yield dependency that does no work."""
    yield None


app = FastAPI(lifespan=lifespan)
app_with_yield_dependency = FastAPI(lifespan=lifespan)


# No return annotations, as in the other apps: FastAPI then encodes the same dict the same
# way for every contender (an annotation would switch to pydantic's serializer).
@app.get("/items/{item_id}")
async def get_item(item_id: int):  # type: ignore[no-untyped-def]
    """The item as JSON, read with one ``pool.fetchrow``."""
    return await _item(item_id)


@app_with_yield_dependency.get("/items/{item_id}")
async def get_item_with_dependency(  # type: ignore[no-untyped-def]
    item_id: int, _: Annotated[None, Depends(nothing)]
):
    """The same, with a yield dependency that does nothing."""
    return await _item(item_id)
