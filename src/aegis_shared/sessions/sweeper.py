"""Expired-session cleanup in the background, for an application's lifespan.

Several workers of one app each run a sweeper; a random delay before every sweep
(``jitter``) spreads them out, so they rarely sweep at the same time, and when they do,
the batches are short transactions on different rows, not a pile-up on one lock.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from aegis_shared.sessions.store import SessionStore, check_batch_size

logger = logging.getLogger("aegis_shared.sessions")


def _seconds(name: str, value: timedelta, minimum: float) -> float:
    if not isinstance(value, timedelta) or value.total_seconds() < minimum:
        raise ValueError(
            f"{name}={value!r} is invalid: pass a timedelta of at least {minimum} seconds, "
            "for example timedelta(minutes=10)"
        )
    return value.total_seconds()


class SessionSweeper:
    """Calls :meth:`SessionStore.cleanup_expired` every ``every`` (plus up to ``jitter``).

    >>> sweeper = SessionSweeper(store, every=timedelta(minutes=10))
    >>> sweeper.start()          # in the app's lifespan startup
    >>> await sweeper.stop()     # and shutdown

    or ``async with sweep_sessions(store): ...`` around the app's lifespan. A failed sweep
    is logged and retried at the next turn; it never stops the sweeper.
    """

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
        self.store = store
        self.every = _seconds("every", every, 0.001)
        self.jitter = _seconds("jitter", jitter, 0)
        self.batch_size = check_batch_size(batch_size)
        self.sweeps = 0
        self.deleted = 0
        self._task: asyncio.Task[None] | None = None
        self._random = random.Random()

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start sweeping in a background task of the running event loop."""
        if self.running:
            raise RuntimeError("this SessionSweeper is already running; stop() it first")
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="aegis session sweeper"
        )

    async def stop(self) -> None:
        """Stop sweeping; a sweep in progress is cancelled between statements and its
        current batch rolled back (the next sweep deletes those rows)."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        # wait() rather than await: the task ends cancelled, which is no error here, while
        # a cancellation of stop() itself still propagates.
        await asyncio.wait([task])

    async def sweep(self) -> int:
        """Run one sweep now; returns how many sessions were deleted."""
        deleted = await self.store.cleanup_expired(batch_size=self.batch_size)
        self.sweeps += 1
        self.deleted += deleted
        if deleted:
            logger.info("session sweeper deleted %d expired sessions", deleted)
        return deleted

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every + self._random.uniform(0, self.jitter))
            try:
                await self.sweep()
            except Exception:
                logger.exception(
                    "session sweep failed; the sweeper retries in about %.0f s", self.every
                )


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
