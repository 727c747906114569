"""The deployment bench's app (``python -m bench deploy``): ``GET /items/{id}`` in a
read-only unit of work, so that with replicas it reads on one. The topology comes from the
environment as in production: DATABASE_URL (the server or pgbouncer), DATABASE_PGBOUNCER,
DATABASE_DIRECT_URL, DATABASE_REPLICA_URLS; ``uvicorn --workers N`` gives the workers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from aegis_shared.database import DatabaseManager, configure_database, reset_database
from aegis_shared.web import ReadYourWritesMiddleware, install_error_handlers
from bench.models import BenchUnitOfWork, item_json

db = DatabaseManager.from_settings(pool_size=10, max_overflow=0)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    configure_database(db)
    try:
        yield
    finally:
        reset_database()
        await db.close()


app = FastAPI(lifespan=lifespan)
install_error_handlers(app)
app.add_middleware(ReadYourWritesMiddleware, db=db, secure=False)


@app.get("/items/{item_id}")
async def get_item(item_id: int) -> dict[str, object]:
    async with BenchUnitOfWork(read_only=True) as uow:
        return item_json(await uow.items.get_one(item_id))
