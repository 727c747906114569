"""What the event log holds, per channel: for an operator (``aegis events stats``).

A service on one session, so it composes with others through ``provide_services``:

>>> async with provide_services(EventLogStats) as (stats,):
...     channels = await stats.channels()
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from aegis_shared.events.tables import channels_table, events_table


@dataclass(frozen=True, slots=True)
class ChannelStats:
    """One channel's retained events at one moment."""

    channel: str
    #: Committed events still in the log (trimmed ones are gone).
    count: int
    #: Oldest and newest retained position; ``None`` when none is retained.
    oldest_position: int | None
    newest_position: int | None
    #: The last position the channel has given (its counter; trimming never lowers it).
    last_position: int
    #: ``created_at`` of the oldest and newest retained event.
    oldest_at: datetime | None
    newest_at: datetime | None


class EventLogStats:
    """Counts of the event log on ``session`` (reads only)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def channels(self) -> list[ChannelStats]:
        """Every channel with a counter row, in name order: one grouped SELECT over the
        committed events (a full scan of the log: an operator's query, not a request's)."""
        e, c = events_table.c, channels_table.c
        per_channel = (
            select(
                e.channel,
                func.count().label("n"),
                func.min(e.position).label("lo"),
                func.max(e.position).label("hi"),
                func.min(e.created_at).label("first_at"),
                func.max(e.created_at).label("last_at"),
            )
            .where(e.position.is_not(None))
            .group_by(e.channel)
            .subquery()
        )
        s = per_channel.c
        statement = (
            select(c.channel, c.last_position, s.n, s.lo, s.hi, s.first_at, s.last_at)
            .select_from(channels_table.outerjoin(per_channel, s.channel == c.channel))
            .order_by(c.channel)
        )
        rows = (await self.session.execute(statement)).all()
        return [
            ChannelStats(
                channel=str(channel),
                count=int(count or 0),
                oldest_position=None if lo is None else int(lo),
                newest_position=None if hi is None else int(hi),
                last_position=int(last),
                oldest_at=_aware(first_at),
                newest_at=_aware(last_at),
            )
            for channel, last, count, lo, hi, first_at, last_at in rows
        ]


def _aware(value: datetime | None) -> datetime | None:
    """min()/max() of a UTCDateTime column come back through the column's type on most
    drivers, but aggregate results may skip it (SQLite returns text or naive values)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


__all__ = ["ChannelStats", "EventLogStats"]
