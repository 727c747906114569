"""Static proof (``mypy --strict``) that a wrapping unit of work and the savepoint blocks
have the types they document: ``wrap`` returns the subclass, its repositories keep their
declared types, ``savepoint()`` yields the session.

Checked by ``make lint`` (``mypy src tests/typing``); pytest never collects it.
"""

from __future__ import annotations

from typing import assert_type

from sqlalchemy import String
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from aegis_shared.database import BaseRepository, TransactionManager, UnitOfWork
from aegis_shared.database.session import AegisSession


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


class ItemRepository(BaseRepository[Item]):
    pass


class ShopUnitOfWork(UnitOfWork):
    items: ItemRepository


async def in_a_handler(session: AsyncSession) -> None:
    uow = ShopUnitOfWork.wrap(session)
    assert_type(uow, ShopUnitOfWork)
    assert_type(uow.items, ItemRepository)
    assert_type(ShopUnitOfWork(session=session, write=True), ShopUnitOfWork)
    async with uow.savepoint() as inside:
        assert_type(inside, AegisSession)
        assert_type(await uow.items.create({"name": "x"}), Item)
    await uow.commit()


async def with_a_manager(session: AsyncSession) -> None:
    tm = TransactionManager(session)
    async with tm.savepoint() as inside:
        assert_type(inside, AsyncSession)
    async with tm.transaction() as inside:
        assert_type(inside, AsyncSession)
