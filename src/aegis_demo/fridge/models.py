"""Seed 002's tables on ``aegis_shared.sessions``: the session, its fridge, the ingredients.

Changes from the seed, and why:

* ``session_id`` holds the SHA-256 digest of the id in the cookie (ServerSessionMixin), so
  a leaked table yields no usable session.
* The seed's indexes on ``expires_at`` and ``last_accessed`` are gone on PostgreSQL: every
  touch writes those columns, and an index on them would make each touch a non-HOT update.
  Cleanup finds expired rows by page ranges instead (aegis_shared.sessions.cleanup).
* ``UNIQUE (session_id, ingredient_id)`` is itself the index on those two columns, so the
  seed's extra ``(session_id, ingredient_id)`` index is left out; SessionChildMixin indexes
  ``session_id`` for the cascade, and ``ingredient_id`` keeps its index for its foreign key.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, MetaData, String, UniqueConstraint
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from aegis_shared.models import NAMING_CONVENTION, UTCDateTime, utcnow
from aegis_shared.sessions import ServerSessionMixin, SessionChildMixin

__all__ = ["FridgeBase", "Ingredient", "UserFridgeIngredient", "UserFridgeSession"]


class FridgeBase(AsyncAttrs, DeclarativeBase):
    """The fridge app's own declarative base."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Ingredient(FridgeBase):
    """Something that can be in a fridge."""

    __tablename__ = "ingredients"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    category: Mapped[str] = mapped_column(String(50))


class UserFridgeSession(ServerSessionMixin, FridgeBase):
    """A visitor's session (seed 002's ``user_fridge_sessions``)."""

    __tablename__ = "user_fridge_sessions"

    ingredients: Mapped[list[UserFridgeIngredient]] = relationship(
        back_populates="session", passive_deletes=True, lazy="raise"
    )


class UserFridgeIngredient(SessionChildMixin, FridgeBase):
    """One ingredient in one session's fridge, at most once."""

    __tablename__ = "user_fridge_ingredients"
    __session_model__ = UserFridgeSession
    __table_args__ = (UniqueConstraint("session_id", "ingredient_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ingredient_id: Mapped[int] = mapped_column(ForeignKey("ingredients.id"), index=True)
    added_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    session: Mapped[UserFridgeSession] = relationship(back_populates="ingredients", lazy="raise")
    ingredient: Mapped[Ingredient] = relationship(lazy="raise")
