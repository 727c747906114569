"""A session whose every change is undone afterwards: one outer transaction, savepoints
for the code under test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncEngine

from aegis_shared.database.session import AegisSession


@asynccontextmanager
async def isolated_session(engine: AsyncEngine) -> AsyncIterator[AegisSession]:
    """Yield a session inside a transaction that is rolled back at the end.

    ``commit()`` in the code under test only releases a SAVEPOINT
    (``join_transaction_mode="create_savepoint"``), so tests see their own writes and
    leave nothing behind, on PostgreSQL, SQLite and MariaDB alike.
    """
    async with engine.connect() as connection:
        transaction = await connection.begin()
        session = AegisSession(
            bind=connection,
            expire_on_commit=False,
            join_transaction_mode="create_savepoint",
        )
        try:
            yield session
        finally:
            await session.close()
            if transaction.is_active:
                await transaction.rollback()
