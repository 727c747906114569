"""Reading the log: the committed events of a channel after a position."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from aegis_shared.database.manager import DatabaseManager
from aegis_shared.events.publish import check_channel
from aegis_shared.events.tables import events_table

#: Most events one read returns.
MAX_READ: Final = 1000
DEFAULT_READ: Final = 100


@dataclass(frozen=True, slots=True)
class Event:
    """One committed event: its ``channel``, its ``position`` there (1, 2, 3, ... in commit
    order), its ``data`` (the JSON value published) and when it was published."""

    channel: str
    position: int
    data: Any
    created_at: datetime


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
    return [Event(channel, int(pos), json.loads(data), created) for pos, data, created in rows]


async def read_events(
    source: DatabaseManager | AsyncSession,
    channel: str,
    *,
    after: int = 0,
    limit: int = DEFAULT_READ,
) -> list[Event]:
    """The committed events of ``channel`` with a position above ``after``, in position
    order, at most ``limit`` of them: one SELECT through the unique (channel, position)
    index.

    >>> events = await read_events(db, "fridge:42", after=last_seen)
    >>> last_seen = events[-1].position if events else last_seen

    With a :class:`~aegis_shared.database.DatabaseManager` the read takes a pooled
    connection for the one statement and gives it back; with a session it runs in that
    session's transaction (which never sees its own unpublished events: they have no
    position before COMMIT). Fewer than ``limit`` events means the reader is caught up;
    since positions follow commit order, reading again after the last one never skips an
    event that commits later.

    Raises ``ValueError`` before any SQL for a bad channel, ``after`` or ``limit``.
    """
    check_channel(channel)
    check_position(after)
    _check_limit(limit)
    statement = _statement(channel, after, limit)
    if isinstance(source, DatabaseManager):
        async with source.engine.connect() as conn:
            result = await conn.execute(statement)
            return _events(channel, result.all())
    result = await source.execute(statement)
    return _events(channel, result.all())
