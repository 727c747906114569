"""Advanced Alchemy's FastAPI extension: ``AdvancedAlchemy`` + ``SQLAlchemyAsyncConfig``,
the session from ``Depends(alchemy.provide_session())``, ``SQLAlchemyAsyncRepository.get``;
its ``NotFoundError`` becomes a 404."""

from __future__ import annotations

from typing import Annotated

from advanced_alchemy.exceptions import NotFoundError
from advanced_alchemy.extensions.fastapi import (
    AdvancedAlchemy,
    AsyncSessionConfig,
    EngineConfig,
    SQLAlchemyAsyncConfig,
)
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from bench.aa_models import AAItemRepository
from bench.common import PG_URL

app = FastAPI()
alchemy = AdvancedAlchemy(
    config=SQLAlchemyAsyncConfig(
        connection_string=PG_URL,
        engine_config=EngineConfig(pool_size=10, max_overflow=0),
        session_config=AsyncSessionConfig(expire_on_commit=False),
        commit_mode="manual",
    ),
    app=app,
)


@app.exception_handler(NotFoundError)
async def not_found(request: Request, exc: NotFoundError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


@app.get("/items/{item_id}")
async def get_item(  # type: ignore[no-untyped-def]
    item_id: int, db_session: Annotated[AsyncSession, Depends(alchemy.provide_session())]
):
    item = await AAItemRepository(session=db_session).get(item_id)
    return {"id": item.id, "name": item.name, "category": item.category, "price": item.price}
