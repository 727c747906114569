"""Explicit transaction blocks with SAVEPOINT nesting (seed 001's ``TransactionManager``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncSession

from aegis_shared.database import callbacks
from aegis_shared.database.callbacks import OnCommitCallback
from aegis_shared.database.session import rollback_quietly

_DEPTH = "aegis.transaction_depth"


class TransactionManager:
    """Group work on one session into all-or-nothing blocks.

    >>> async with db.session() as session:
    ...     async with TransactionManager(session).transaction():
    ...         await users.create(User(email="a@example.com"))
    ...         async with TransactionManager(session).transaction():  # SAVEPOINT
    ...             ...

    The outermost block commits when it ends normally and rolls back when it raises; work
    the session held before the block is part of that transaction. A nested block is a
    SAVEPOINT: if it raises, only its own work is undone and the exception propagates, so
    the caller may catch it and carry on. Depth is kept on the session, so managers created
    by different code for the same session nest correctly.
    """

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    @property
    def depth(self) -> int:
        """How many ``transaction()`` blocks are open on this session (0 outside any)."""
        depth: int = self.session.info.get(_DEPTH, 0)
        return depth

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """Open a block: the outermost commits or rolls back, inner ones are SAVEPOINTs."""
        depth = self.depth
        self.session.info[_DEPTH] = depth + 1
        try:
            if depth == 0:
                async with self._outermost():
                    yield self.session
            else:
                async with self._savepoint():
                    yield self.session
        finally:
            self.session.info[_DEPTH] = depth

    @asynccontextmanager
    async def _outermost(self) -> AsyncIterator[None]:
        try:
            yield
            # Inside the try: a COMMIT (or its flush) that fails rolls back like the block.
            await self.session.commit()
        except BaseException:
            callbacks.discard_all(self.session)
            await rollback_quietly(self.session)
            raise
        # An AegisSession already ran them in commit(); a plain AsyncSession did not.
        await callbacks.run_committed(self.session)

    @asynccontextmanager
    async def _savepoint(self) -> AsyncIterator[None]:
        savepoint = await self.session.begin_nested()
        callbacks.push_frame(self.session)
        try:
            yield
            # A flush that fails at the end of the block fails the block, like one inside it.
            await self.session.flush()
        except BaseException:
            callbacks.drop_frame(self.session)
            # Also when a failed flush already deactivated it: only rollback() closes the
            # SAVEPOINT and makes the enclosing transaction usable again.
            await savepoint.rollback()
            raise
        await savepoint.commit()
        callbacks.release_frame(self.session)

    def on_commit(self, callback: OnCommitCallback) -> None:
        """Run ``callback`` (sync or async, no arguments) after the outermost commit.

        Registered inside a block that later rolls back, it never runs. A callback that
        raises is logged, not raised: the data is already committed by then.
        """
        callbacks.register(self.session, callback)
