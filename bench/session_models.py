"""The session tables of the ``sessions`` scenario's store level: one per store of ours,
so the touch-every-read store's updates (and their HOT share) are its own."""

from __future__ import annotations

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

from aegis_shared.models import NAMING_CONVENTION
from aegis_shared.sessions import ServerSessionMixin


class SessionBenchBase(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class BenchSession(ServerSessionMixin, SessionBenchBase):
    """Sessions of the default store (touch at most every 5 minutes) and of the asyncpg
    anchor, 1,000 each."""

    __tablename__ = "bench_sessions"


class BenchSessionTouched(ServerSessionMixin, SessionBenchBase):
    """Sessions of the store that writes a touch on every read."""

    __tablename__ = "bench_sessions_touched"
