"""Expired-session cleanup in the background, for an application's lifespan.

Several workers of one app each run a sweeper; a random delay before every sweep
(``jitter``, see :mod:`aegis_shared.periodic`) spreads them out, so they rarely sweep at
the same time, and when they do, the batches are short transactions on different rows,
not a pile-up on one lock.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from aegis_shared.periodic import PeriodicSweeper
from aegis_shared.sessions.store import SessionStore, check_batch_size

logger = logging.getLogger("aegis_shared.sessions")


class SessionSweeper(PeriodicSweeper):
    """Calls :meth:`SessionStore.cleanup_expired` every ``every`` (plus up to ``jitter``).

    >>> sweeper = SessionSweeper(store, every=timedelta(minutes=10))
    >>> sweeper.start()          # in the app's lifespan startup
    >>> await sweeper.stop()     # and shutdown

    or ``async with sweep_sessions(store): ...`` around the app's lifespan. A failed sweep
    is logged and retried at the next turn; it never stops the sweeper.
    """

    label = "session sweep"
    task_name = "aegis session sweeper"
    logger = logger

    def __init__(
        self,
        store: SessionStore,
        *,
        every: timedelta = timedelta(minutes=10),
        jitter: timedelta = timedelta(minutes=2),
        batch_size: int = 1000,
    ) -> None:
        if not isinstance(store, SessionStore):
            raise TypeError(f"SessionSweeper needs a SessionStore, got {type(store).__name__}")
        super().__init__(every=every, jitter=jitter)
        self.store = store
        self.batch_size = check_batch_size(batch_size)
        self.deleted = 0

    async def sweep(self) -> int:
        """Run one sweep now; returns how many sessions were deleted."""
        deleted = await self.store.cleanup_expired(batch_size=self.batch_size)
        self.sweeps += 1
        self.deleted += deleted
        if deleted:
            logger.info("session sweeper deleted %d expired sessions", deleted)
        return deleted


@asynccontextmanager
async def sweep_sessions(
    store: SessionStore,
    *,
    every: timedelta = timedelta(minutes=10),
    jitter: timedelta = timedelta(minutes=2),
    batch_size: int = 1000,
) -> AsyncIterator[SessionSweeper]:
    """Run a :class:`SessionSweeper` for the duration of the block (an app's lifespan).

    >>> @asynccontextmanager
    ... async def lifespan(app):
    ...     async with sweep_sessions(store):
    ...         yield
    """
    sweeper = SessionSweeper(store, every=every, jitter=jitter, batch_size=batch_size)
    sweeper.start()
    try:
        yield sweeper
    finally:
        await sweeper.stop()
