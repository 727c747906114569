"""Wake-ups after a commit that published events: local hubs at once, other processes
through one coalesced PostgreSQL ``NOTIFY``.

A wake-up says only "channel X has new events": never the events themselves (the log is
the source of truth, so a lost wake-up costs latency, never an event) and so never near
NOTIFY's 8,000-byte payload limit. The NOTIFY is sent after COMMIT, not inside the
publishing transaction: a transaction that NOTIFYs takes a cluster-wide lock at its
commit, and the publishing one should not. At most one NOTIFY is in flight per engine;
commits during it are gathered into the next, so a burst of publishes in one process
costs one or two NOTIFYs, not one each.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Final

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Engine
from sqlalchemy.types import Text
from sqlalchemy.util.concurrency import greenlet_spawn

logger = logging.getLogger("aegis_shared.events")

#: The one PostgreSQL LISTEN channel of the library; its payload is an event channel name.
NOTIFY_CHANNEL: Final = "aegis_events"

#: Called (synchronously, no I/O) with the channels a local commit published to.
LocalListener = Callable[[Sequence[str]], None]
#: Sends one NOTIFY per channel name given, in one round trip; False when it cannot now.
Sender = Callable[[list[str]], Awaitable[bool]]

_NOTIFY_SQL = text("SELECT pg_notify(:notify_channel, c) FROM unnest(:channels) AS c").bindparams(
    bindparam("channels", type_=ARRAY(Text()))
)


class _EngineWakeups:
    def __init__(self, engine: Engine) -> None:
        self.engine = weakref.ref(engine)
        self.listeners: list[LocalListener] = []
        self.sender: Sender | None = None
        self.pending: set[str] = set()
        self.task: asyncio.Task[None] | None = None
        #: NOTIFY round trips sent (for tests and benchmarks).
        self.notifies_sent = 0

    def committed(self, channels: Sequence[str]) -> None:
        for listener in list(self.listeners):
            try:
                listener(channels)
            except Exception:  # the commit succeeded; a broken listener must not say otherwise
                logger.exception("event hub wake-up failed after a commit")
        engine = self.engine()
        if engine is None or engine.dialect.name != "postgresql":
            return
        self.pending.update(channels)
        if self.task is None or self.task.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # committed outside an event loop: nobody to wake here
                return
            self.task = loop.create_task(self._send_pending())

    async def _send_pending(self) -> None:
        while self.pending:
            batch = sorted(self.pending)
            self.pending.clear()
            try:
                sender = self.sender
                if sender is None or not await sender(batch):
                    await self._send_pooled(batch)
                self.notifies_sent += 1
            except Exception as exc:
                # Other processes learn of these events at their next wake-up instead.
                logger.warning("NOTIFY of new events on %s failed: %s", batch, exc)

    async def _send_pooled(self, channels: list[str]) -> None:
        engine = self.engine()
        if engine is None:
            return

        def send() -> None:
            with engine.connect() as conn:
                conn.execute(_NOTIFY_SQL, {"notify_channel": NOTIFY_CHANNEL, "channels": channels})
                conn.commit()

        await greenlet_spawn(send)


_by_engine: weakref.WeakKeyDictionary[Engine, _EngineWakeups] = weakref.WeakKeyDictionary()


def _for(engine: Engine) -> _EngineWakeups:
    wakeups = _by_engine.get(engine)
    if wakeups is None:
        wakeups = _by_engine[engine] = _EngineWakeups(engine)
    return wakeups


def committed(engine: Engine, channels: Sequence[str]) -> None:
    """A transaction on ``engine`` committed events on ``channels`` (from the commit hook)."""
    _for(engine).committed(channels)


def add_listener(engines: Iterable[Engine], listener: LocalListener) -> None:
    """Call ``listener`` after each local commit of events on one of ``engines``."""
    for engine in engines:
        _for(engine).listeners.append(listener)


def remove_listener(engines: Iterable[Engine], listener: LocalListener) -> None:
    """Stop calling ``listener``."""
    for engine in engines:
        listeners = _for(engine).listeners
        if listener in listeners:
            listeners.remove(listener)


def set_sender(engines: Iterable[Engine], sender: Sender | None) -> None:
    """Send the NOTIFYs of ``engines`` through ``sender`` (a hub's own listening connection,
    so no pooled one is taken), or through a pooled connection when ``None``."""
    for engine in engines:
        _for(engine).sender = sender


def notifies_sent(engine: Engine) -> int:
    """How many NOTIFY round trips were sent for commits on ``engine``."""
    return _for(engine).notifies_sent


async def drain(engine: Engine) -> None:
    """Wait until the NOTIFYs of commits so far on ``engine`` were sent (tests, shutdown)."""
    task = _for(engine).task
    if task is not None and not task.done():
        await asyncio.shield(task)
