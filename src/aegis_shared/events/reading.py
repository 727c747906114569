"""Reading the log: the committed events of a channel after a position.

Retention (:mod:`aegis_shared.events.retention`) removes the oldest events of a channel,
always a prefix of its positions. A reader that asks for what follows a position whose
successors were removed would otherwise get the retained events as if nothing had been
missed; it gets :class:`EventsTrimmedError` instead. Positions are gapless, so a trim shows
as a first event above ``after + 1``, or as no event at all while the channel's counter is
above ``after``; the counter is read only in that second case, on the same connection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from aegis_shared.database.manager import DatabaseManager
from aegis_shared.events.publish import check_channel
from aegis_shared.events.tables import channels_table, events_table

#: Most events one read returns.
MAX_READ: Final = 1000
DEFAULT_READ: Final = 100


@dataclass(frozen=True, slots=True)
class Event:
    """One committed event: its ``channel``, its ``position`` there (1, 2, 3, ... in commit
    order), its ``data`` (the JSON value published) and when it was published. ``text`` is
    ``data`` as stored, compact JSON: a stream sends it as it is, so an event fanned out to
    many subscribers is encoded once (at publish), not once per subscriber."""

    channel: str
    position: int
    data: Any
    created_at: datetime
    text: str = field(default="", repr=False, compare=False)


class EventsTrimmedError(LookupError):
    """The events of ``channel`` that follow position ``after`` were removed by retention:
    a reader that derives state from the channel missed changes and must reload that state
    (a page: refetch what it shows), then read on after ``resume_after``, the position just
    before the oldest retained event (the channel's last position when none is retained).
    """

    def __init__(self, channel: str, after: int, resume_after: int) -> None:
        self.channel = channel
        self.after = after
        self.resume_after = resume_after
        super().__init__(
            f"the events of channel {channel!r} after position {after} were trimmed by "
            f"retention: reload the state built from this channel, then read after position "
            f"{resume_after} (the oldest retained event follows it)"
        )


def check_position(after: object) -> int:
    """``after`` if it is a position to read after (an int >= 0); ``ValueError`` otherwise."""
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise ValueError(
            f"after={after!r} is not a position: pass an int >= 0 (0 reads from the first "
            "event, N reads what follows the event at position N)"
        )
    return after


def _check_limit(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_READ:
        raise ValueError(
            f"limit={limit!r} is invalid: pass an int from 1 to {MAX_READ}, and read again "
            "after the last position returned for more"
        )
    return limit


def _statement(channel: str, after: int, limit: int) -> Select[Any]:
    e = events_table.c
    return (
        select(e.position, e.data, e.created_at)
        .where(e.channel == channel, e.position > after)
        .order_by(e.position)
        .limit(limit)
    )


def _events(channel: str, rows: Any) -> list[Event]:
    return [
        Event(channel, int(pos), json.loads(data), created, data) for pos, data, created in rows
    ]


async def _read_checked(
    conn: AsyncConnection | AsyncSession, channel: str, after: int, limit: int
) -> list[Event]:
    statement = _statement(channel, after, limit)
    events = _events(channel, (await conn.execute(statement)).all())
    if events:
        if events[0].position > after + 1:
            raise EventsTrimmedError(channel, after, events[0].position - 1)
        return events
    c = channels_table.c
    head = int(await conn.scalar(select(c.last_position).where(c.channel == channel)) or 0)
    if head <= after:
        return []  # caught up
    # Positions up to ``head`` had committed when the counter was read, and only a trim
    # removes committed events. Read again rather than conclude: an event may have
    # committed between the two statements, and then it is the answer.
    events = _events(channel, (await conn.execute(statement)).all())
    if events and events[0].position == after + 1:
        return events
    raise EventsTrimmedError(channel, after, events[0].position - 1 if events else head)


async def read_events(
    source: DatabaseManager | AsyncSession,
    channel: str,
    *,
    after: int = 0,
    limit: int = DEFAULT_READ,
) -> list[Event]:
    """The committed events of ``channel`` with a position above ``after``, in position
    order, at most ``limit`` of them: one SELECT through the unique (channel, position)
    index. When it finds nothing, the channel's counter is read too (by primary key), and
    the SELECT repeated only if that counter is above ``after``.

    >>> try:
    ...     events = await read_events(db, "fridge:42", after=last_seen)
    ... except EventsTrimmedError as trimmed:   # retention removed what follows last_seen
    ...     state = await reload_state()
    ...     last_seen = trimmed.resume_after
    ... else:
    ...     last_seen = events[-1].position if events else last_seen

    With a :class:`~aegis_shared.database.DatabaseManager` the read takes a pooled
    connection for its statements and gives it back; with a session it runs in that
    session's transaction (which never sees its own unpublished events: they have no
    position before COMMIT). Fewer than ``limit`` events means the reader is caught up;
    since positions follow commit order, reading again after the last one never skips an
    event that commits later.

    Raises ``ValueError`` before any SQL for a bad channel, ``after`` or ``limit``;
    :class:`EventsTrimmedError` when events that follow ``after`` were removed by
    retention (``after=0`` included: the channel's first events are gone), rather than
    return the retained ones as if none were missed.
    """
    check_channel(channel)
    check_position(after)
    _check_limit(limit)
    if isinstance(source, DatabaseManager):
        async with source.engine.connect() as conn:
            return await _read_checked(conn, channel, after, limit)
    return await _read_checked(source, channel, after, limit)
