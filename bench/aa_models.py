"""Advanced Alchemy's mapping of ``bench_items``, its repository and service (bench-only
import)."""

from __future__ import annotations

from datetime import datetime

from advanced_alchemy.base import BigIntBase
from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from sqlalchemy import Boolean, DateTime, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from bench.models import TABLE


class AAItem(BigIntBase):
    __tablename__ = TABLE

    name: Mapped[str] = mapped_column(String(100))
    category: Mapped[str] = mapped_column(String(20), index=True)
    price: Mapped[int] = mapped_column(Integer)
    in_stock: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AAItemRepository(SQLAlchemyAsyncRepository[AAItem]):
    model_type = AAItem


class AAItemService(SQLAlchemyAsyncRepositoryService[AAItem]):
    """The service its Litestar docs put between handlers and the repository."""

    repository_type = AAItemRepository
