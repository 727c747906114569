"""The limit of this stack: the same endpoint on a raw asyncpg pool (``pool.fetchrow``), no
ORM and no session; a missing id is a 404."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from fastapi import FastAPI, HTTPException

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


app = FastAPI(lifespan=lifespan)


# No return annotation, as in the other apps: FastAPI then encodes the same dict the same
# way for every contender (an annotation would switch to pydantic's serializer).
@app.get("/items/{item_id}")
async def get_item(item_id: int):  # type: ignore[no-untyped-def]
    """The item as JSON, read with one ``pool.fetchrow``."""
    row = await state["pool"].fetchrow(SQL, item_id)
    if row is None:
        raise HTTPException(404, "Item not found")
    return {
        "id": row["id"],
        "name": row["name"],
        "category": row["category"],
        "price": row["price"],
    }
