"""One subscriber's view of a channel: replay from the log, then live, each position once.

The rule that makes "no gap, no duplicate" hold whatever the timing: a subscription hands
out positions strictly one after another. An event it already passed is dropped; an event
that skips ahead (it subscribed while a read was under way, or its queue overflowed) sends
it to the log for what lies between. The hub's live events only save those reads.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self

from aegis_shared.events.reading import MAX_READ, Event, EventsTrimmedError

if TYPE_CHECKING:
    from aegis_shared.events.hub import _Channel

#: Events a subscriber may have waiting before it counts as fallen behind.
DEFAULT_QUEUE_SIZE: Final = 256


@dataclass(frozen=True, slots=True)
class Resync:
    """Yielded by a subscription that fell behind its bounded queue: what it missed is read
    from the log next (nothing is lost), starting after ``after``. A subscriber that keeps
    derived state may want to know; most can ignore it."""

    channel: str
    after: int


@dataclass(frozen=True, slots=True)
class Trimmed:
    """Yielded by a subscription whose next events were removed by retention before it
    read them (it resumed from an old position, or fell behind by more than the retention
    keeps): unlike :class:`Resync`, events are lost. A subscriber that keeps state derived
    from the channel must reload it; the subscription then goes on with the events after
    ``resume_after`` (the oldest retained ones), with no duplicate. ``after`` is the last
    position it had handed out."""

    channel: str
    after: int
    resume_after: int


_CLOSED: Final = object()
_WAKE: Final = object()


class Subscription:
    """An async iterator of a channel's :class:`~aegis_shared.events.Event`, with a
    :class:`Resync` marker when it fell behind (nothing lost) and a :class:`Trimmed` one
    when retention removed events it had not read (reload state), made by
    :meth:`EventHub.subscribe`.

    >>> async with hub.subscribe("fridge:42", after=last_seen) as events:
    ...     async for event in events:
    ...         if isinstance(event, Event):
    ...             send(event.position, event.data)

    Idle, it holds no connection: it waits on its own in-memory queue, which the hub fills.
    """

    def __init__(
        self,
        channel: _Channel,
        after: int | None,
        queue_size: int,
        read: Callable[[str, int, int], Awaitable[list[Event]]],
    ) -> None:
        self.channel = channel.name
        self._channel = channel
        self._read = read
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize=queue_size)
        self._backlog: deque[Event] = deque()
        #: The last position handed out (None until the first step for after=None).
        self.position = after
        self._catch_up = after is not None
        self._overflowed = False
        self._closed = False

    # -- the hub's side (no I/O, no awaiting) ------------------------------------------

    def offer(self, event: Event) -> None:
        """A live event from the hub's read: queued, or marks the subscription behind."""
        if self._closed or self._overflowed:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            # Bounded memory: forget what is queued and read it from the log instead.
            self._drain()
            self._overflowed = True
            self._queue.put_nowait(_WAKE)  # a subscriber waiting on the queue sees it now

    def end(self) -> None:
        """The hub closed: the iteration stops after what it already handed out."""
        self._drain()
        self._queue.put_nowait(_CLOSED)

    def _drain(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()

    # -- the subscriber's side --------------------------------------------------------------

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event | Resync | Trimmed:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._backlog:
                event = self._backlog.popleft()
                self.position = event.position
                return event
            if self.position is None:
                # Live from now: from the position the hub has read up to.
                self.position = await self._channel.ready()
            if self._overflowed:
                self._overflowed = False
                self._catch_up = True
                return Resync(self.channel, self.position)
            if self._catch_up:
                await self._channel.ready()  # its live reads start after what this covers
                self._catch_up = False
                try:
                    events = await self._read(self.channel, self.position, MAX_READ)
                except EventsTrimmedError as trimmed:
                    # Told once, then on from the oldest retained event; live events up
                    # to it are dropped below as already passed.
                    missed_after, self.position = self.position, trimmed.resume_after
                    self._catch_up = True
                    return Trimmed(self.channel, missed_after, trimmed.resume_after)
                self._backlog.extend(events)
                self._catch_up = len(events) == MAX_READ
                continue
            item = await self._queue.get()
            if item is _CLOSED:
                self._closed = True
                self._channel.leave(self)
                raise StopAsyncIteration
            if item is _WAKE:
                continue
            assert isinstance(item, Event)
            if item.position <= self.position:
                continue  # already handed out (replayed from the log)
            if item.position > self.position + 1:
                self._catch_up = True  # what lies between is in the log
                continue
            self.position = item.position
            return item

    async def aclose(self) -> None:
        """Stop receiving; the hub forgets the subscription."""
        if not self._closed:
            self._closed = True
            self._drain()
            self._channel.leave(self)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
