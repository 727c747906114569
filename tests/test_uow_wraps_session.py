"""A unit of work wrapping a session someone else opened (issue 11, item 9), on every backend.

One declaration, ``ShopUnitOfWork``, serves a FastAPI handler (wrapping the request's
session from ``Depends(get_session)``) and background work (opening its own). The rule:
whoever opened the session owns the outermost commit. Requests run under a real uvicorn
(tests/http.py) through a real ``httpx.AsyncClient``; every outcome is checked from a
fresh session afterwards.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException
from sqlalchemy import String, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from aegis_shared.database import (
    BaseRepository,
    DatabaseManager,
    TransactionManager,
    UnitOfWork,
    get_database,
    get_session,
)
from aegis_shared.errors.exceptions import DuplicateEntityError, UnitOfWorkStateError
from aegis_shared.web import DatabaseSessionMiddleware
from tests.http import serve


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "wrap_items"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)


class ItemRepository(BaseRepository[Item]):
    pass


class ShopUnitOfWork(UnitOfWork):
    items: ItemRepository


class Boom(Exception):
    """An application error raised on purpose inside a block."""


async def add_item(uow: ShopUnitOfWork, name: str) -> int:
    """Service code written once, for handlers and background work alike."""
    item = await uow.items.create({"name": name})
    await uow.commit()
    return item.id


@pytest.fixture
async def shop(make_db: Any) -> DatabaseManager:
    db: DatabaseManager = await make_db(Base.metadata)
    return db


async def names(db: DatabaseManager) -> list[str]:
    """The item names a fresh session sees."""
    async with db.session() as session:
        return list((await session.scalars(select(Item.name).order_by(Item.name))).all())


def shop_app(
    *, middleware: bool, done: asyncio.Queue[str] | None = None, commit_on_success: bool = True
) -> FastAPI:
    app = FastAPI()
    if middleware:
        app.add_middleware(DatabaseSessionMiddleware, commit_on_success=commit_on_success)

    def shop_uow(session: AsyncSession = Depends(get_session)) -> ShopUnitOfWork:  # noqa: B008
        return ShopUnitOfWork.wrap(session)

    @app.post("/items/{name}", status_code=201)
    async def create(
        name: str,
        uow: ShopUnitOfWork = Depends(shop_uow),  # noqa: B008
        session: AsyncSession = Depends(get_session),  # noqa: B008
    ) -> dict[str, Any]:
        item_id = await add_item(uow, name)
        return {
            "id": item_id,
            "same_session": uow.items.session is session,
            "in_transaction": session.in_transaction(),
        }

    @app.post("/items/{name}/then-fail")
    async def create_then_fail(
        name: str,
        uow: ShopUnitOfWork = Depends(shop_uow),  # noqa: B008
    ) -> None:
        await add_item(uow, name)
        raise HTTPException(status_code=409, detail="changed my mind")

    @app.post("/items/{name}/block-then-fail")
    async def block_then_fail(
        name: str,
        session: AsyncSession = Depends(get_session),  # noqa: B008
    ) -> None:
        async with TransactionManager(session).transaction():
            await ItemRepository(session).create({"name": name})
        raise HTTPException(status_code=400, detail="invalid after all")

    @app.post("/unique/{name}", status_code=201)
    async def create_unique(
        name: str,
        uow: ShopUnitOfWork = Depends(shop_uow),  # noqa: B008
    ) -> dict[str, Any]:
        # The slug-collision retry: a collision undoes only its SAVEPOINT.
        for candidate in (name, f"{name}-2"):
            item = Item(name=candidate)
            try:
                async with uow.savepoint():
                    await uow.items.create(item)
            except DuplicateEntityError:
                continue
            await uow.commit()
            return {"name": item.name}
        raise HTTPException(status_code=409, detail="taken")

    async def add_later(name: str) -> None:
        # Background work: the same class opens and owns its session ...
        async with ShopUnitOfWork() as uow:
            await add_item(uow, name)
        # ... or wraps a background-pool session.
        async with get_database().background_session() as session:
            await add_item(ShopUnitOfWork.wrap(session), f"{name}-wrapped")
        assert done is not None
        done.put_nowait(name)

    @app.post("/items/{name}/later", status_code=202)
    async def create_later(name: str, tasks: BackgroundTasks) -> dict[str, str]:
        tasks.add_task(add_later, name)
        return {"queued": name}

    return app


# -- in a request, under DatabaseSessionMiddleware: the middleware commits ------------------


async def test_wrapper_in_a_handler_joins_the_request_transaction(shop: DatabaseManager) -> None:
    async with serve(shop_app(middleware=True)) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/items/apple")
    assert response.status_code == 201
    body = response.json()
    assert body["same_session"] is True
    # uow.commit() only flushed: the request's transaction was still open ...
    assert body["in_transaction"] is True
    # ... and the middleware committed it when the response started.
    assert await names(shop) == ["apple"]


async def test_wrapper_commit_is_undone_when_the_request_fails(shop: DatabaseManager) -> None:
    async with serve(shop_app(middleware=True)) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/items/pear/then-fail")
    assert response.status_code == 409
    assert await names(shop) == []


async def test_savepoint_retry_in_a_handler(shop: DatabaseManager) -> None:
    async with serve(shop_app(middleware=True)) as url, httpx.AsyncClient(base_url=url) as client:
        first = await client.post("/unique/plum")
        second = await client.post("/unique/plum")
    assert (first.status_code, first.json()) == (201, {"name": "plum"})
    assert (second.status_code, second.json()) == (201, {"name": "plum-2"})
    assert await names(shop) == ["plum", "plum-2"]


async def test_transaction_block_in_a_handler_leaves_the_commit_to_the_middleware(
    shop: DatabaseManager,
) -> None:
    async with serve(shop_app(middleware=True)) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/items/pear/block-then-fail")
    assert response.status_code == 400
    # The block was a SAVEPOINT in the request's transaction, which the 400 rolled back.
    assert await names(shop) == []


# -- in a request, without the middleware: the handler owns get_session's session ----------


async def test_wrapper_commits_a_session_nobody_claimed(shop: DatabaseManager) -> None:
    app = shop_app(middleware=False)
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        created = await client.post("/items/apple")
        failed = await client.post("/items/pear/then-fail")
    assert created.status_code == 201
    assert created.json()["same_session"] is True
    assert created.json()["in_transaction"] is False  # committed by uow.commit()
    # The handler committed before it raised: what a handler's own commit does too.
    assert failed.status_code == 409
    assert await names(shop) == ["apple", "pear"]


async def test_transaction_block_commits_a_session_nobody_claimed(shop: DatabaseManager) -> None:
    async with serve(shop_app(middleware=False)) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/items/pear/block-then-fail")
    assert response.status_code == 400
    assert await names(shop) == ["pear"]


async def test_middleware_that_does_not_commit_leaves_the_commit_to_the_handler(
    shop: DatabaseManager,
) -> None:
    app = shop_app(middleware=True, commit_on_success=False)
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/items/apple")
    assert response.status_code == 201
    assert response.json()["in_transaction"] is False  # uow.commit() committed
    assert await names(shop) == ["apple"]


# -- background work ------------------------------------------------------------------------


async def test_same_unit_of_work_in_a_background_task(shop: DatabaseManager) -> None:
    done: asyncio.Queue[str] = asyncio.Queue()
    app = shop_app(middleware=True, done=done)
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/items/fig/later")
        assert response.status_code == 202
        assert await asyncio.wait_for(done.get(), timeout=10) == "fig"
    assert await names(shop) == ["fig", "fig-wrapped"]
    assert shop.pool_status()["background"]["checked_out"] == 0


# -- the wrapper's own rules ------------------------------------------------------------------


async def test_wrapper_of_a_unit_of_work_leaves_the_commit_to_it(shop: DatabaseManager) -> None:
    async with ShopUnitOfWork() as outer:
        inner = ShopUnitOfWork.wrap(outer.session)
        assert inner.items.session is outer.session
        await add_item(inner, "kiwi")
        assert await names(shop) == []  # flushed, not committed
        with pytest.raises(UnitOfWorkStateError, match="ShopUnitOfWork opened"):
            await inner.rollback()
        await outer.commit()
    assert await names(shop) == ["kiwi"]


async def test_wrapper_of_a_unit_of_work_is_undone_with_it(shop: DatabaseManager) -> None:
    async with ShopUnitOfWork() as outer:
        await add_item(ShopUnitOfWork.wrap(outer.session), "kiwi")
        # The outer unit of work ends without commit: everything is rolled back.
    assert await names(shop) == []


async def test_leaving_a_wrapper_block_neither_commits_nor_closes(shop: DatabaseManager) -> None:
    async with shop.session_factory() as session:
        with pytest.raises(Boom):
            async with ShopUnitOfWork(session=session) as uow:
                await uow.items.create({"name": "lime"})
                raise Boom
        # The opener decides what happens to the work; the session is still usable.
        assert await session.scalar(select(func.count()).select_from(Item)) == 1
        assert await names(shop) == []
        with pytest.raises(UnitOfWorkStateError, match=r"after its block ended; wrap the"):
            _ = uow.items
        with pytest.raises(UnitOfWorkStateError):
            async with uow:
                pass
        await session.commit()
    assert await names(shop) == ["lime"]


async def test_wrap_with_write_after_the_first_statement_is_refused(
    shop: DatabaseManager,
) -> None:
    async with shop.session_factory() as session:
        await session.execute(select(func.count()).select_from(Item))
        with pytest.raises(UnitOfWorkStateError, match="too late"):
            ShopUnitOfWork.wrap(session, write=True)


async def test_wrap_refuses_db_and_session_together(shop: DatabaseManager) -> None:
    async with shop.session_factory() as session:
        with pytest.raises(TypeError, match="both db= and session="):
            ShopUnitOfWork(shop, session=session)
