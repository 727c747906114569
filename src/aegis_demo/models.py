"""The reference application's own tables: the access log (seed 000) and the marks of the
seed data already created."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from aegis_shared.database import BaseRepository
from aegis_shared.models import NAMING_CONVENTION, UTCDateTime, utcnow

__all__ = ["AccessLog", "AccessLogRepository", "DemoBase", "SeedMark", "SeedMarkRepository"]

#: How much of a path the access log keeps (longer ones are cut, never refused).
MAX_PATH = 300


class DemoBase(DeclarativeBase):
    """The application's metadata (the fridge and seed 003 keep theirs)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class AccessLog(DemoBase):
    """One request as the access log keeps it: no query string, no header, no body (they
    may carry tokens), only what an operator needs to see traffic."""

    __tablename__ = "demo_access_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    method: Mapped[str] = mapped_column(String(10))
    path: Mapped[str] = mapped_column(String(MAX_PATH))
    status: Mapped[int] = mapped_column(Integer)
    duration_ms: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class SeedMark(DemoBase):
    """A part of the seed data that exists: its unique name is what lets two workers that
    start at once create the part exactly once (``get_or_create`` on it)."""

    __tablename__ = "demo_seed_marks"

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AccessLogRepository(BaseRepository[AccessLog]):
    """The access log's rows."""

    async def newest(self, limit: int = 20) -> list[AccessLog]:
        """The last ``limit`` requests, newest first."""
        return await self.list(order_by="-id", limit=limit)


class SeedMarkRepository(BaseRepository[SeedMark]):
    """The seed marks."""
