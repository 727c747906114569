"""Static proof (``mypy --strict``) that models built on the session mixins type-check the
way users write them, and that the store's API has the types it documents.

Checked by ``make lint`` (``mypy src tests/typing``); pytest never collects it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, assert_type

from sqlalchemy import UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from aegis_shared.database import DatabaseManager
from aegis_shared.sessions import (
    ServerSessionMixin,
    SessionChildMixin,
    SessionStats,
    SessionStore,
    StoredSession,
)


class Base(DeclarativeBase):
    pass


class UserFridgeSession(ServerSessionMixin, Base):
    __tablename__ = "user_fridge_sessions"


class UserFridgeIngredient(SessionChildMixin, Base):
    __tablename__ = "user_fridge_ingredients"
    __session_model__ = UserFridgeSession
    __table_args__ = (UniqueConstraint("session_id", "ingredient_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    ingredient_id: Mapped[int]


async def use(db: DatabaseManager, cookie: str | None) -> None:
    store = SessionStore(db, UserFridgeSession)
    created = await store.create({"fridge": []})
    assert_type(created, StoredSession)
    assert_type(created.data, dict[str, Any])
    assert_type(created.expires_at, datetime)
    assert_type(await store.get(cookie), StoredSession | None)
    assert_type(await store.save(cookie, {"fridge": [1]}), bool)
    assert_type(await store.rotate(cookie), StoredSession | None)
    assert_type(await store.cleanup_expired(batch_size=500), int)
    assert_type(await store.stats(), SessionStats)
    row = UserFridgeSession(session_id="k", data={}, expires_at=created.expires_at)
    assert_type(row.data, dict[str, Any])
    assert_type(row.session_id, str)
    child = UserFridgeIngredient(session_id=row.session_id, ingredient_id=1)
    assert_type(child.session_id, str)
