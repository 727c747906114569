"""Seed 002's ``FridgeService`` on the library: the worked example of docs/guide.md.

The seed wraps ``db.add`` in ``try/except IntegrityError``, which never fires there (the
INSERT runs at the commit, outside the ``try``) and, if it did, would roll back every
ingredient added before. Here a duplicate is skipped by the database itself
(``create_many(..., skip_duplicates=True)``: ``ON CONFLICT DO NOTHING``), so adding an
ingredient twice, or from 100 requests at once, leaves one row and raises nothing.

Given a ``channel`` (:func:`fridge_channel`), each change also publishes an event in the
same transaction, so another tab following ``GET /fridge/events`` sees it when, and only
when, it committed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import delete
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from aegis_demo.fridge.models import Ingredient, UserFridgeIngredient
from aegis_shared.database import BaseRepository, UnitOfWork, with_db_retry
from aegis_shared.events import publish
from aegis_shared.models import utcnow

__all__ = [
    "FridgeRepository",
    "FridgeService",
    "FridgeUnitOfWork",
    "IngredientRepository",
    "fridge_channel",
]


def fridge_channel(fridge_id: str) -> str:
    """The event channel of one fridge. ``fridge_id`` is a random name kept in the session's
    data, not the session's key: the key changes at every login (``rotate``), and a stream
    that resumes by ``Last-Event-ID`` must find the same channel, with the same positions."""
    return f"fridge:{fridge_id}"


class IngredientRepository(BaseRepository[Ingredient]):
    """The ingredient catalogue."""


class FridgeRepository(BaseRepository[UserFridgeIngredient]):
    """One session's fridge rows; ``session_key`` is the session's stored key
    (``HttpSession.key``), never the id in the cookie."""

    async def add(self, session_key: str, ingredient_ids: Iterable[int]) -> int:
        """Put the ingredients in the fridge (those already there are skipped); returns how
        many were new (on MariaDB: how many were given)."""
        now = utcnow()
        rows = [
            {"session_id": session_key, "ingredient_id": ingredient_id, "added_at": now}
            for ingredient_id in dict.fromkeys(ingredient_ids)
        ]
        return await self.create_many(rows, returning=False, skip_duplicates=True)

    async def contents(self, session_key: str) -> list[UserFridgeIngredient]:
        """The fridge's rows, oldest first, each with its ingredient loaded.

        Two reads, each one statement on the fast path (no transaction): the rows, then
        their ingredients, which are then set on the rows as loaded. Seed 002's
        ``selectinload`` gives the same objects through the ORM path, with a transaction
        (BEGIN, ROLLBACK) around the same two SELECTs.
        """
        rows = await self.list(
            filters={"session_id": session_key}, order_by=["added_at", "id"], limit=1000
        )
        if not rows:
            return rows
        ids = sorted({row.ingredient_id for row in rows})
        found = await IngredientRepository(self.session).list(filters={"id": ids}, limit=len(ids))
        by_id = {ingredient.id: ingredient for ingredient in found}
        for row in rows:
            set_committed_value(row, "ingredient", by_id[row.ingredient_id])
        return rows

    async def remove(self, session_key: str, ingredient_ids: Sequence[int]) -> int:
        """Take the ingredients out of the fridge; returns how many rows went."""
        if not ingredient_ids:
            return 0
        statement = delete(UserFridgeIngredient).where(
            UserFridgeIngredient.session_id == session_key,
            UserFridgeIngredient.ingredient_id.in_(list(ingredient_ids)),
        )
        result = await self.session.execute(statement)
        assert isinstance(result, CursorResult)
        return int(result.rowcount)


class FridgeUnitOfWork(UnitOfWork):
    """The fridge and the catalogue on one session."""

    fridge: FridgeRepository
    ingredients: IngredientRepository


async def _announce(
    session: AsyncSession, channel: str | None, change: str, ingredient_ids: Sequence[int]
) -> None:
    """Publish ``{change: [ids]}`` (each id once) on ``channel``, in the caller's
    transaction; nothing without a channel."""
    if channel is not None:
        await publish(session, channel, {change: list(dict.fromkeys(ingredient_ids))})


class FridgeService:
    """Seed 002's fridge operations, each one unit of work, retried on a conflict."""

    @staticmethod
    @with_db_retry
    async def add_ingredients(
        session_key: str, ingredient_ids: Sequence[int], *, channel: str | None = None
    ) -> int:
        """Add ingredients to the fridge; returns how many were new. With ``channel``
        (:func:`fridge_channel`), an ``{"added": [ids]}`` event is published with it."""
        async with FridgeUnitOfWork() as uow:
            added = await uow.fridge.add(session_key, ingredient_ids)
            if added:
                await _announce(uow.session, channel, "added", ingredient_ids)
            await uow.commit()
            return added

    @staticmethod
    async def get_session_ingredients(
        session_key: str, *, read_only: bool = False
    ) -> list[UserFridgeIngredient]:
        """The fridge's contents with each ingredient loaded. ``read_only=True`` lets the
        read go to a replica that has this client's last write (read-your-writes); leave it
        off where the read must be at least as new as something read on the primary."""
        async with FridgeUnitOfWork(read_only=read_only) as uow:
            return await uow.fridge.contents(session_key)

    @staticmethod
    @with_db_retry
    async def remove_ingredients(
        session_key: str, ingredient_ids: Sequence[int], *, channel: str | None = None
    ) -> int:
        """Remove ingredients from the fridge; returns how many were removed. With
        ``channel``, a ``{"removed": [ids]}`` event is published with it."""
        async with FridgeUnitOfWork() as uow:
            removed = await uow.fridge.remove(session_key, ingredient_ids)
            if removed:
                await _announce(uow.session, channel, "removed", ingredient_ids)
            await uow.commit()
            return removed

    @staticmethod
    async def add_ingredients_batch(session: AsyncSession, session_key: str, ids: list[int]) -> int:
        """Seed 002's batch insert, on a session the caller owns (and commits)."""
        return await FridgeRepository(session).add(session_key, ids)
