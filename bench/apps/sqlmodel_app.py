"""The SQLModel tutorial's shape: a ``SQLModel`` table class, ``async_sessionmaker``, a
``get_session`` generator dependency and ``session.get(Item, id)``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import Column, DateTime
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlmodel import Field, SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from bench.common import PG_URL


class Item(SQLModel, table=True):
    __tablename__ = "bench_items"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100)
    category: str = Field(max_length=20, index=True)
    price: int
    in_stock: bool
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


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


app = FastAPI(lifespan=lifespan)


@app.get("/items/{item_id}")
async def get_item(item_id: int, session: Annotated[AsyncSession, Depends(get_session)]):  # type: ignore[no-untyped-def]
    item = await session.get(Item, item_id)
    if item is None:
        raise HTTPException(status_code=404, detail=f"Item {item_id} not found")
    return {"id": item.id, "name": item.name, "category": item.category, "price": item.price}
