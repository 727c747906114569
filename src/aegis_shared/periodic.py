"""A sweep run every so often in a background task: the session store's cleanup and the
event log's retention are both one (:mod:`aegis_shared.sessions.sweeper`,
:mod:`aegis_shared.events.retention`).

Several workers of one app each run their sweepers; a random delay before every sweep
(``jitter``) spreads them out, so they rarely sweep at the same time. A failed sweep is
logged and tried again at the next turn; it never stops the sweeper.
"""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import timedelta
from typing import ClassVar

from aegis_shared.errors.exceptions import ConfigurationError


def seconds_of(name: str, value: object, minimum: float) -> float:
    """``value`` (a ``timedelta`` of at least ``minimum`` seconds) in seconds; a clear
    ``ConfigurationError`` (a ``ValueError``) otherwise."""
    if not isinstance(value, timedelta) or value.total_seconds() < minimum:
        raise ConfigurationError(
            f"{name}={value!r} is invalid: pass a timedelta of at least {minimum} seconds, "
            "for example timedelta(minutes=10)"
        )
    return value.total_seconds()


class PeriodicSweeper:
    """Calls :meth:`sweep` every ``every`` plus a random delay up to ``jitter``, in a task
    of the running event loop, between :meth:`start` and :meth:`stop`."""

    #: What a sweep is called in messages ("session sweep").
    label: ClassVar[str] = "sweep"
    #: The name of its task ("aegis session sweeper").
    task_name: ClassVar[str] = "aegis sweeper"
    #: Its logger.
    logger: ClassVar[logging.Logger] = logging.getLogger("aegis_shared")

    def __init__(self, *, every: timedelta, jitter: timedelta) -> None:
        self.every = seconds_of("every", every, 0.001)
        self.jitter = seconds_of("jitter", jitter, 0)
        self.sweeps = 0
        self._task: asyncio.Task[None] | None = None
        self._random = random.Random()

    async def sweep(self) -> int:
        """Run one sweep now; returns how many rows it removed."""
        raise NotImplementedError

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start sweeping in a background task of the running event loop."""
        if self.running:
            raise RuntimeError(f"this {type(self).__name__} is already running; stop() it first")
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.task_name)

    async def stop(self) -> None:
        """Stop sweeping and wait for the task to end; a batch in progress is cancelled
        between statements and rolled back (the next sweep removes those rows). Idempotent."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        # wait() rather than await: the task ending cancelled is no error here, while a
        # cancellation of stop() itself still propagates.
        await asyncio.wait([task])

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every + self._random.uniform(0, self.jitter))
            try:
                await self.sweep()
            except Exception:
                self.logger.exception(
                    "%s failed; the sweeper tries again in about %.0f s", self.label, self.every
                )
