"""The reference application's tables and seed data, made on first start (a demo's
set-up; a deployed service runs migrations instead).

Safe when several worker processes start at once (``uvicorn --workers 2`` on an empty
database): a table another process has just created is not created twice (the set-up is
tried again, and finds it), the catalogue skips names it already holds, and the posts come
with a :class:`~aegis_demo.models.SeedMark` taken by ``get_or_create`` in the same
transaction, so exactly one process writes them.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import MetaData
from sqlalchemy.exc import SQLAlchemyError

from aegis_demo.fridge.app import prepare_database
from aegis_demo.models import DemoBase, SeedMarkRepository
from aegis_demo.realtime.models import Comment, Post, RealtimeBase
from aegis_shared.database import DatabaseManager, UnitOfWork
from aegis_shared.errors.exceptions import DatabaseError

__all__ = ["POSTS", "prepare", "seed_posts"]

logger = logging.getLogger("aegis_demo.seed")

#: The posts a new database starts with, each with its comments.
POSTS: list[tuple[str, list[str]]] = [
    (
        "Welcome to the aegis-shared demo",
        [
            "Every page here is served by one FastAPI app on the library.",
            "The access log of this very request was written on the background pool.",
        ],
    ),
    (
        "Server-side sessions without Redis",
        [
            "Open the fridge in two tabs: a change in one shows in the other at once.",
            "Log in and the session gets a new id; the fridge stays.",
            "Log out and the session row goes, its fridge with it.",
        ],
    ),
    (
        "Streaming answers over Server-Sent Events",
        ["The chat page streams an answer token by token, then stores it."],
    ),
]

#: How often the table set-up is tried when another process creates the same tables.
ATTEMPTS = 5


class SeedUnitOfWork(UnitOfWork):
    """The seed marks, on one transaction with the rows they stand for."""

    seed_marks: SeedMarkRepository


async def _create_tables(db: DatabaseManager, *metadatas: MetaData) -> None:
    for attempt in range(1, ATTEMPTS + 1):
        try:
            await prepare_database(db)  # the fridge's tables, the event log, the catalogue
            for metadata in metadatas:
                await db.create_all(metadata)
            return
        except (DatabaseError, SQLAlchemyError) as exc:
            # Another worker created a table between our check and our CREATE: the next
            # attempt finds it. Anything else fails the same way each time and is raised.
            if attempt == ATTEMPTS:
                raise
            logger.info("table set-up met a concurrent one (%s); trying again", type(exc).__name__)
            await asyncio.sleep(0.2 * attempt)


async def seed_posts(db: DatabaseManager) -> bool:
    """Write :data:`POSTS` unless they were written before; True when this call wrote them."""
    async with SeedUnitOfWork(db) as uow:
        _, created = await uow.seed_marks.get_or_create(name="posts")
        if not created:
            return False
        uow.session.add_all(
            Post(title=title, comments=[Comment(body=body) for body in comments])
            for title, comments in POSTS
        )
        await uow.commit()
        return True


async def prepare(db: DatabaseManager) -> None:
    """Every table of the application, the catalogue and the posts (idempotent)."""
    await _create_tables(db, RealtimeBase.metadata, DemoBase.metadata)
    await seed_posts(db)
