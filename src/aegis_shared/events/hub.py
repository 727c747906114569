"""``EventHub``: one per process and database, fanning committed events out in memory.

Per channel with subscribers the hub keeps one reader task: each wake-up costs one read
of the log (``position > last read``), whatever the number of subscribers, and its events
are offered to every subscriber's bounded queue (see :mod:`.subscription`). Wake-ups come
from this process's own commits at once (:mod:`.wakeups`), and from other processes:

* PostgreSQL: a LISTEN connection of the hub's own, outside the pool (:mod:`.listener`);
  a slow safety poll besides, so even a NOTIFY that never arrived costs latency only.
* SQLite and MariaDB: polling, one statement per tick for all channels (their counters),
  at an adaptive interval: ``poll_min`` after activity, doubling while idle up to
  ``poll_max``.

Idle, the hub holds no pooled connection: each read or poll takes one and gives it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

from sqlalchemy import select
from sqlalchemy.engine import URL, Engine

from aegis_shared.database.engine import driver_connect_kwargs
from aegis_shared.database.manager import DatabaseManager
from aegis_shared.database.urls import normalize_url
from aegis_shared.errors.exceptions import ConfigurationError
from aegis_shared.events import wakeups
from aegis_shared.events.consumers import Consumer, Handler
from aegis_shared.events.listener import Listener
from aegis_shared.events.publish import check_channel
from aegis_shared.events.reading import (
    MAX_READ,
    Event,
    EventsTrimmedError,
    check_position,
    read_events,
)
from aegis_shared.events.subscription import DEFAULT_QUEUE_SIZE, Subscription
from aegis_shared.events.tables import channels_table

if TYPE_CHECKING:
    from aegis_shared.config import Settings

logger = logging.getLogger("aegis_shared.events")

#: Channels per polling statement (an IN list well below every parameter limit).
_POLL_CHUNK: Final = 500


class _Channel:
    """The hub's state for one channel: its subscribers and the position read up to."""

    def __init__(self, hub: EventHub, name: str) -> None:
        self.hub = hub
        self.name = name
        self.subscribers: set[Subscription] = set()
        self.last = 0
        self._ready = asyncio.Event()
        self._wake = asyncio.Event()
        self.reads = 0
        self.stopped = False
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"aegis-events:{name}")

    async def ready(self) -> int:
        """The position the hub had read up to when it became ready to fan out."""
        await self._ready.wait()
        return self.last

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """End the reader task: cancelled, and told by a flag too (see EventHub.close)."""
        self.stopped = True
        self._wake.set()
        self._ready.set()  # a subscriber waiting for it goes on to find the end marker
        self.task.cancel()

    def leave(self, subscription: Subscription) -> None:
        self.subscribers.discard(subscription)
        if not self.subscribers:
            self.hub._forget(self)

    async def _run(self) -> None:
        while not self.stopped:
            try:
                self.last = await self.hub._head(self.name)
                break
            except Exception as exc:
                logger.warning("event hub cannot read channel %s: %s; retrying", self.name, exc)
                await asyncio.sleep(self.hub.retry_delay)
        self._ready.set()
        while not self.stopped:
            await self._wake.wait()
            self._wake.clear()
            if self.stopped:
                return
            try:
                await self._read_new()
            except Exception as exc:
                # The next wake-up (a commit, a poll, a reconnect) reads from the same place.
                logger.warning("event hub read of channel %s failed: %s", self.name, exc)
                await asyncio.sleep(self.hub.retry_delay)
                self._wake.set()

    async def _read_new(self) -> None:
        while True:
            self.reads += 1
            try:
                events = await self.hub._read(self.name, self.last, MAX_READ)
            except EventsTrimmedError as trimmed:
                # The hub fell behind retention: read on from what is left. Each
                # subscriber sees the jump and learns of the trim from its own read.
                self.last = trimmed.resume_after
                continue
            if events:
                self.last = events[-1].position
                self.hub._activity()
                for subscriber in list(self.subscribers):
                    for event in events:
                        subscriber.offer(event)
            if len(events) < MAX_READ:
                return


class EventHub:
    """Live events of one :class:`~aegis_shared.database.DatabaseManager` for this process.

    >>> hub = EventHub(db)                      # one per process; in the app's lifespan
    >>> async with hub.subscribe("fridge:42", after=last_seen) as events:
    ...     async for event in events:          # replay after last_seen, then live
    ...         print(event.position, event.data)
    >>> await hub.close()

    ``direct_url``: on PostgreSQL, where the LISTEN connection goes (``DATABASE_DIRECT_URL``
    in :class:`~aegis_shared.config.Settings`): the server itself when the manager's URL is
    a transaction pooler such as pgbouncer, which cannot keep a LISTEN. Defaults to the
    manager's ``direct_url``, else its URL; a manager with ``pgbouncer=True`` needs one.
    ``queue_size``: events a subscriber may have waiting before it is
    resynchronised from the log. ``poll_min`` / ``poll_max``: polling interval bounds in
    seconds (SQLite, MariaDB); ``safety_poll``: the PostgreSQL poll for lost wake-ups.
    """

    @classmethod
    def from_settings(
        cls, db: DatabaseManager, settings: Settings | None = None, **options: Any
    ) -> EventHub:
        """A hub for ``db`` whose LISTEN goes to ``DATABASE_DIRECT_URL`` when it is set."""
        if settings is None:
            from aegis_shared.config import Settings

            settings = Settings()
        options.setdefault("direct_url", settings.database_direct_url)
        return cls(db, **options)

    def __init__(
        self,
        db: DatabaseManager,
        *,
        direct_url: str | URL | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        poll_min: float = 0.05,
        poll_max: float = 1.0,
        safety_poll: float = 30.0,
        reconnect_min: float = 0.1,
        reconnect_max: float = 5.0,
        listener_check_interval: float = 30.0,
    ) -> None:
        for name, value in (
            ("queue_size", queue_size),
            ("poll_min", poll_min),
            ("poll_max", poll_max),
            ("safety_poll", safety_poll),
            ("reconnect_min", reconnect_min),
            ("reconnect_max", reconnect_max),
            ("listener_check_interval", listener_check_interval),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigurationError(f"EventHub({name}={value!r}) must be a number > 0")
        if poll_max < poll_min or reconnect_max < reconnect_min:
            raise ConfigurationError(
                "EventHub: poll_max must be >= poll_min and reconnect_max >= reconnect_min"
            )
        self.db = db
        self.queue_size = int(queue_size)
        self.poll_min = float(poll_min)
        self.poll_max = float(poll_max)
        #: Wait before reading again after a failed read (the database restarting).
        self.retry_delay = min(float(poll_max), 1.0)
        self._channels: dict[str, _Channel] = {}
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []
        self._retired: set[asyncio.Task[None]] = set()
        self._engines: list[Engine] = list(
            dict.fromkeys([db.engine.sync_engine, db.background_engine.sync_engine])
        )
        self._interval = self.poll_min
        self._kick = asyncio.Event()
        self._listener: Listener | None = None
        if db.dialect_name == "postgresql":
            url = db.url
            chosen = direct_url if direct_url is not None else db.direct_url
            if chosen is not None:
                url = normalize_url(chosen, "DATABASE_DIRECT_URL")
            elif db.pgbouncer:
                raise ConfigurationError(
                    "The event hub LISTENs on a connection of its own, which a transaction "
                    "pooler cannot keep: behind pgbouncer (DATABASE_PGBOUNCER=true) give the "
                    "server itself as DATABASE_DIRECT_URL (DatabaseManager(direct_url=...) "
                    "or EventHub(direct_url=...))."
                )
            self._listener = Listener(
                url,
                driver_connect_kwargs(db.engine, url),
                on_channel=self._wake_channel,
                on_connected=self._wake_all,
                connect_timeout=db.connect_timeout,
                check_interval=listener_check_interval,
                backoff_min=reconnect_min,
                backoff_max=reconnect_max,
            )
            # Fixed, slow: NOTIFY does the work, this only bounds a lost one's latency.
            self.poll_min = self.poll_max = float(safety_poll)
            self._interval = self.poll_min
        elif direct_url is not None:
            raise ConfigurationError(
                f"EventHub(direct_url=...) is for PostgreSQL's LISTEN; {db.dialect_name} is "
                "polled through the manager's pool. Leave direct_url out."
            )
        self._started = False
        self._consumers: list[Consumer] = []

    # -- lifecycle ---------------------------------------------------------------------

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        loop = asyncio.get_running_loop()
        wakeups.add_listener(self._engines, self._local_commit)
        if self._listener is not None:
            listener = self._listener
            self._tasks.append(loop.create_task(listener.run(), name="aegis-events:listen"))
            wakeups.set_sender(self._engines, listener.send)
        self._tasks.append(loop.create_task(self._poll(), name="aegis-events:poll"))

    async def close(self) -> None:
        """Stop the hub: every subscription's iteration ends, its tasks are cancelled and
        awaited, and the LISTEN connection is closed. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for consumer in self._consumers:
            await consumer.stop()
        wakeups.remove_listener(self._engines, self._local_commit)
        if self._listener is not None:
            wakeups.set_sender(self._engines, None)
        channels = list(self._channels.values())
        self._channels.clear()
        tasks = [*self._tasks, *(channel.task for channel in channels), *self._retired]
        # Cancelled, and stopped by flags as well: a cancellation that lands in a
        # driver's connection close can be swallowed there (seen with MariaDB), and the
        # loops would then wait for their next wake-up forever.
        for channel in channels:
            channel.stop()
        self._kick.set()
        if self._listener is not None:
            self._listener.stop()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for channel in channels:
            for subscriber in list(channel.subscribers):
                subscriber.end()
        if self._listener is not None:
            await self._listener.close()

    async def __aenter__(self) -> Self:
        self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    @property
    def listener_pid(self) -> int | None:
        """PostgreSQL: the server pid of the LISTEN connection while it is open."""
        return self._listener.pid if self._listener is not None else None

    @property
    def listener_connections(self) -> int:
        """PostgreSQL: LISTEN connections made so far (more than 1 after a reconnect)."""
        return self._listener.connections if self._listener is not None else 0

    def reads(self, channel: str) -> int:
        """Live reads of the log made for ``channel`` (one per wake-up with subscribers)."""
        state = self._channels.get(channel)
        return state.reads if state is not None else 0

    # -- subscribing ---------------------------------------------------------------------

    def subscribe(self, channel: str, *, after: int | None = None) -> Subscription:
        """Events of ``channel``: those after position ``after`` from the log, then live
        ones as they commit, each position exactly once and in order. ``after=None``: live
        ones only, from now. Use it as ``async with hub.subscribe(...) as events`` (or call
        ``aclose()``), so the hub forgets it when the subscriber leaves.

        Raises ``ValueError`` for a bad channel or ``after``; ``RuntimeError`` after
        :meth:`close`.
        """
        check_channel(channel)
        if after is not None:
            check_position(after)
        if self._closed:
            raise RuntimeError("this EventHub was closed; make a new one to subscribe again")
        self._start()
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = _Channel(self, channel)
        subscription = Subscription(state, after, self.queue_size, self._read)
        state.subscribers.add(subscription)
        return subscription

    async def latest_position(self, channel: str) -> int:
        """The position of ``channel``'s last committed event (0 for none yet), in one
        read on a pooled connection given back at once.

        For "snapshot, then follow": take it before reading the state a client starts
        from, then ``subscribe(channel, after=that)``. An event that commits in between
        is in the snapshot and arrives again, so apply events idempotently; none is missed.
        """
        check_channel(channel)
        return await self._head(channel)

    def _forget(self, channel: _Channel) -> None:
        if self._channels.get(channel.name) is channel:
            del self._channels[channel.name]
            # Awaited by close(): a read it was in the middle of gives its connection back.
            self._retired.add(channel.task)
            channel.task.add_done_callback(self._retired.discard)
            channel.stop()

    # -- after-commit consumers (see .consumers) ----------------------------------------

    def consume(self, name: str, channel: str, handler: Handler, **options: Any) -> Consumer:
        """Run ``handler`` after commit on each event of ``channel``, at least once and in
        order, from the position stored for consumer ``name`` (the options are those of
        :class:`~aegis_shared.events.consumers.Consumer`); it stops with the hub.

        Raises ``ValueError`` for a bad name, channel or option, or a name already
        consuming ``channel`` in this hub; ``RuntimeError`` after :meth:`close`.
        """
        if self._closed:
            raise RuntimeError("this EventHub was closed; make a new one to consume again")
        if any(c.name == name and c.channel == channel for c in self._consumers):
            raise ValueError(f"consumer {name!r} already consumes {channel!r} in this hub")
        consumer = Consumer(self, name, channel, handler, **options)
        self._start()
        self._consumers.append(consumer)
        consumer.start()
        return consumer

    def consumer(self, name: str, channel: str, **options: Any) -> Callable[[Handler], Handler]:
        """:meth:`consume` as a decorator: ``@hub.consumer("welcome-mail", "users")``."""

        def register(handler: Handler) -> Handler:
            self.consume(name, channel, handler, **options)
            return handler

        return register

    # -- reading -------------------------------------------------------------------------

    async def _read(self, channel: str, after: int, limit: int) -> list[Event]:
        return await read_events(self.db, channel, after=after, limit=limit)

    async def _head(self, channel: str) -> int:
        c = channels_table.c
        async with self.db.engine.connect() as conn:
            value = await conn.scalar(select(c.last_position).where(c.channel == channel))
        return int(value or 0)

    # -- wake-ups ------------------------------------------------------------------------

    def _local_commit(self, channels: Sequence[str]) -> None:
        self._activity()
        for name in channels:
            self._wake_channel(name)

    def _wake_channel(self, name: str) -> None:
        state = self._channels.get(name)
        if state is not None:
            state.wake()

    def _wake_all(self) -> None:
        for state in list(self._channels.values()):
            state.wake()

    def _activity(self) -> None:
        if self._interval > self.poll_min:
            self._interval = self.poll_min
            self._kick.set()  # the poller may be sleeping a long idle interval

    async def _poll(self) -> None:
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), timeout=self._interval)
            self._kick.clear()
            if self._closed:
                return
            if not self._channels:
                continue
            try:
                found = await self._poll_once()
            except Exception as exc:
                logger.warning("event hub poll failed: %s", exc)
                found = False
            if found:
                self._interval = self.poll_min
            else:
                self._interval = min(self.poll_max, self._interval * 2)

    async def _poll_once(self) -> bool:
        names = [name for name, state in self._channels.items() if state._ready.is_set()]
        c = channels_table.c
        found = False
        async with self.db.engine.connect() as conn:
            for start in range(0, len(names), _POLL_CHUNK):
                chunk = names[start : start + _POLL_CHUNK]
                rows = await conn.execute(
                    select(c.channel, c.last_position).where(c.channel.in_(chunk))
                )
                for name, last in rows:
                    state = self._channels.get(name)
                    if state is not None and int(last) > state.last:
                        state.wake()
                        found = True
        return found
