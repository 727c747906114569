"""Values the database cannot store or compare are ``InvalidValueError`` (a 422 with a
fixed body over HTTP), never a raw driver error: numbers out of a column's range, strings
too long, a NUL character, a query-string value compared with an integer column. Through
a real uvicorn server and client, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from sqlalchemy import Integer, MetaData, String
from sqlalchemy.ext.asyncio import AsyncAttrs, AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from aegis_shared.database import BaseRepository, get_session
from aegis_shared.models import NAMING_CONVENTION
from aegis_shared.web import DatabaseSessionMiddleware, install_error_handlers
from tests.conftest import MakeDb
from tests.http import serve

SECRET = "hunter2-private-note"
SESSION = Depends(get_session)


class IvBase(AsyncAttrs, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Gadget(IvBase):
    __tablename__ = "iv_gadgets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(10))
    weight: Mapped[int] = mapped_column(Integer, default=0)
    note: Mapped[str] = mapped_column(String(50), default=SECRET)


class GadgetRepository(BaseRepository[Gadget]):
    pass


def _app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(DatabaseSessionMiddleware)
    install_error_handlers(app)

    @app.post("/gadgets")
    async def create(body: dict[str, Any], session: AsyncSession = SESSION) -> Any:
        gadget = await GadgetRepository(session).create(body)
        return {"id": gadget.id}

    @app.get("/gadgets")
    async def listing(request: Request, session: AsyncSession = SESSION) -> Any:
        filters = dict(request.query_params)  # strings, as a careless handler passes them
        return [g.id for g in await GadgetRepository(session).list(filters=filters)]

    return app


def _assert_safe(response: httpx.Response, *hidden: str) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_input"
    for word in ("iv_gadgets", "weight", "SELECT", "INSERT", SECRET, *hidden):
        assert word not in response.text


async def test_out_of_range_and_too_long_values_are_422(make_db: MakeDb, backend: str) -> None:
    await make_db(IvBase.metadata)
    async with serve(_app()) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.post("/gadgets", json={"name": "ok"})).status_code == 200
        huge = 2**40
        response = await client.post("/gadgets", json={"name": "big", "weight": huge})
        if backend == "sqlite":  # every SQLite integer is 64 bits: 2**40 fits
            assert response.status_code == 200
            response = await client.post("/gadgets", json={"name": "big", "weight": 2**70})
        _assert_safe(response, str(huge), str(2**70))
        long_name = "n" * 40
        response = await client.post("/gadgets", json={"name": long_name})
        if backend == "sqlite":  # SQLite does not enforce VARCHAR lengths
            assert response.status_code == 200
        else:
            _assert_safe(response, long_name)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_text_the_server_cannot_hold_and_mismatched_types_are_422(
    make_db: MakeDb,
) -> None:
    await make_db(IvBase.metadata)
    async with serve(_app()) as url, httpx.AsyncClient(base_url=url) as client:
        _assert_safe(await client.post("/gadgets", json={"name": "a\u0000b"}))
        # A query-string value is a string; PostgreSQL will not compare it with an integer.
        _assert_safe(await client.get("/gadgets", params={"weight": "1"}))
