"""The peer of the ``sessions`` scenario: the fridge on starsessions + Redis.

``SessionMiddleware(store=RedisStore(...))`` with a sliding 24-hour lifetime
(``rolling=True``: every request writes the session back with a fresh TTL) and
``SessionAutoloadMiddleware`` (every request reads it). The fridge is the list of
``{"ingredient_id", "added_at"}`` kept in the session data; the ingredients' names come from
PostgreSQL the SQLModel way (a ``SQLModel`` table class, an ``async_sessionmaker``
dependency, one ``SELECT ... WHERE id IN (...)``). ``GET /fridge`` answers with the same
JSON as ``aegis_demo.fridge``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel, Field
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlmodel import Field as ModelField
from sqlmodel import SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from starsessions import SessionAutoloadMiddleware, SessionMiddleware
from starsessions.stores.redis import RedisStore

from bench.common import PG_URL

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_PREFIX = "bench.fridge."


class Ingredient(SQLModel, table=True):
    __tablename__ = "ingredients"

    id: int | None = ModelField(default=None, primary_key=True)
    name: str = ModelField(max_length=100)
    category: str = ModelField(max_length=50)


class IngredientIds(BaseModel):
    ingredient_ids: list[int] = Field(min_length=1, max_length=500)


redis = Redis.from_url(REDIS_URL)
engine = create_async_engine(PG_URL, pool_size=10, max_overflow=0)
sessionmaker = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


async def get_session() -> AsyncIterator[AsyncSession]:
    async with sessionmaker() as session:
        yield session


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await engine.dispose()
        await redis.aclose()


app = FastAPI(lifespan=lifespan)
# The last added middleware is the outermost: SessionMiddleware must wrap the autoloader.
app.add_middleware(SessionAutoloadMiddleware)
app.add_middleware(
    SessionMiddleware,
    store=RedisStore(connection=redis, prefix=REDIS_PREFIX),
    lifetime=timedelta(hours=24),
    rolling=True,
    cookie_https_only=False,
)

DB = Annotated[AsyncSession, Depends(get_session)]


async def _fridge_json(db: AsyncSession, fridge: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not fridge:
        return []
    ids = [entry["ingredient_id"] for entry in fridge]
    found = {i.id: i for i in await db.exec(select(Ingredient).where(col(Ingredient.id).in_(ids)))}
    return [
        {
            "ingredient_id": entry["ingredient_id"],
            "name": found[entry["ingredient_id"]].name,
            "category": found[entry["ingredient_id"]].category,
            "added_at": entry["added_at"],
        }
        for entry in fridge
        if entry["ingredient_id"] in found
    ]


@app.get("/fridge")
async def show_fridge(request: Request, db: DB) -> dict[str, Any]:
    fridge = request.session.get("fridge", [])
    return {"user": request.session.get("user"), "ingredients": await _fridge_json(db, fridge)}


@app.post("/fridge/ingredients")
async def add_ingredients(body: IngredientIds, request: Request, db: DB) -> dict[str, Any]:
    wanted = list(dict.fromkeys(body.ingredient_ids))
    known = set(await db.exec(select(Ingredient.id).where(col(Ingredient.id).in_(wanted))))
    if len(known) != len(wanted):
        raise HTTPException(status_code=422, detail="unknown ingredient")
    fridge = list(request.session.get("fridge", []))
    present = {entry["ingredient_id"] for entry in fridge}
    now = datetime.now(UTC).isoformat()
    fridge += [{"ingredient_id": i, "added_at": now} for i in wanted if i not in present]
    request.session["fridge"] = fridge
    return {"user": request.session.get("user"), "ingredients": await _fridge_json(db, fridge)}
