"""The benchmark table ``bench_items``, mapped once per library.

* :class:`Item` is ours, on ``aegis_shared.models.Base``; the plain SQLAlchemy (Core and
  ORM) contenders use it too, through plain ``AsyncSession`` objects.
* :class:`AAItem` is Advanced Alchemy's, on its ``BigIntBase`` (its own registry and
  metadata), mapped to the same table.
* The SQLModel-style app defines its own ``SQLModel`` table class (``bench/apps``).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from aegis_shared.database import BaseRepository, UnitOfWork
from aegis_shared.models import Base

TABLE = "bench_items"


class Item(Base):
    __tablename__ = TABLE

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    category: Mapped[str] = mapped_column(String(20), index=True)
    price: Mapped[int] = mapped_column(Integer)
    in_stock: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


metadata = Base.metadata


class ItemRepository(BaseRepository[Item]):
    pass


class BenchUnitOfWork(UnitOfWork):
    items: ItemRepository


def item_json(item: object) -> dict[str, object]:
    """The JSON body of ``GET /items/{id}``."""
    return {
        "id": item.id,  # type: ignore[attr-defined]
        "name": item.name,  # type: ignore[attr-defined]
        "category": item.category,  # type: ignore[attr-defined]
        "price": item.price,  # type: ignore[attr-defined]
    }
