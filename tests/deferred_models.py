"""Tables whose foreign key is checked only at COMMIT (PostgreSQL and SQLite; MariaDB has
no deferred constraints): a bad reference fails the COMMIT itself, not the INSERT."""

from __future__ import annotations

from sqlalchemy import ForeignKey, MetaData
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from aegis_shared.models import NAMING_CONVENTION


class DeferredBase(AsyncAttrs, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Shelf(DeferredBase):
    __tablename__ = "deferred_shelves"
    id: Mapped[int] = mapped_column(primary_key=True)


class Book(DeferredBase):
    __tablename__ = "deferred_books"
    id: Mapped[int] = mapped_column(primary_key=True)
    shelf_id: Mapped[int] = mapped_column(
        ForeignKey("deferred_shelves.id", deferrable=True, initially="DEFERRED")
    )
