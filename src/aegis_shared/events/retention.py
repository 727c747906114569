"""Retention: trimming a channel's oldest events in bounded batches.

A channel keeps its events while they are younger than ``max_age`` and among its last
``max_count``; what falls out of either is removed. Trimming always removes a prefix of a
channel's positions (its oldest events, up to a cut), never a hole: readers detect a trim
as "the event after mine is gone" (see :class:`~aegis_shared.events.EventsTrimmedError`),
which holds only if what is left is one unbroken run. So the age rule is "an event goes
once it and every event before it are older than ``max_age``": positions follow commit
order while ``created_at`` is publish time, so an old event that committed after a young
one waits for it.

How, on every backend with the same statements (no dialect branch: none is needed):

1. The channels are read from their counter rows in pages of :data:`_PAGE` names, with,
   per channel, its oldest position (``min``, one probe of the unique (channel, position)
   index) and, with an age limit, its first position younger than the limit: a walk up
   that same index from the oldest event, which reads only the events about to be removed
   plus one. That is why the log needs no index on ``created_at``, which every publish
   would pay for.
2. :func:`retention_cut` decides the highest position to remove: the one place for a rule
   that keeps events longer (say, until every consumer has processed them).
3. The positions from the oldest to the cut are deleted in ranges of ``batch_size``, each
   ``DELETE ... WHERE channel = :c AND position BETWEEN :lo AND :hi`` in a transaction of
   its own on the background pool. Positions are gapless, so a range of ``batch_size``
   positions holds at most ``batch_size`` rows: bounded batches without ``DELETE ...
   LIMIT`` (which PostgreSQL lacks and MariaDB refuses in a subquery), through an index
   range, locking only those rows for a moment.

What it never touches: an event whose transaction is still open (its position is NULL, so
no range matches it, and positions above the counter it read are never in a range), and
the counter rows, so a channel's next position is still the one after its last, trim or
not. Two sweepers trimming at once delete the same ranges; the second finds them gone.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Self, cast

from sqlalchemy import ColumnElement, bindparam, delete, func, null, select
from sqlalchemy.engine import CursorResult

from aegis_shared.database.manager import DatabaseManager
from aegis_shared.errors.exceptions import ConfigurationError
from aegis_shared.events.tables import (
    channels_table,
    consumers_table,
    dead_letters_table,
    events_table,
)
from aegis_shared.models.types import UTCDateTime, utcnow
from aegis_shared.periodic import PeriodicSweeper

if TYPE_CHECKING:
    from aegis_shared.config import Settings

logger = logging.getLogger("aegis_shared.events")

#: Events are kept a week by default: a tab reconnecting after a laptop slept over a
#: weekend still resumes, and the log stays bounded by a week of publishing.
DEFAULT_MAX_AGE: Final = timedelta(days=7)
DEFAULT_BATCH_SIZE: Final = 1000
#: Largest batch: a transaction of more rows would hold its locks (and, on MariaDB, its
#: undo log) long enough to stall publishers of the channel.
MAX_BATCH_SIZE: Final = 100_000
#: Channels per reading statement.
_PAGE: Final = 500

#: Called with the number of events a committed batch removed.
OnBatch = Callable[[int], None] | None


def _check_age(value: object) -> timedelta | None:
    if value is None:
        return None
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise ConfigurationError(
            f"max_age={value!r} is invalid: pass a positive timedelta such as "
            "timedelta(days=7) (EVENTS_RETENTION_MAX_AGE in seconds), or None to keep "
            "events whatever their age"
        )
    return value


def _check_whole(name: str, value: object, low: int, high: int | None, hint: str) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        bounds = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise ConfigurationError(f"{name}={value!r} is invalid: pass a whole number {bounds}{hint}")
    return value


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long a channel keeps its events: those older than ``max_age`` or beyond the last
    ``max_count`` of their channel are trimmed, ``batch_size`` rows per transaction.

    The defaults keep a week of events and no count limit: a count suits one channel's
    rate, not every channel's, so it is yours to choose. ``None`` turns a rule off; with
    both off nothing is trimmed. Bad values raise
    :class:`~aegis_shared.errors.exceptions.ConfigurationError` at construction.
    """

    max_age: timedelta | None = DEFAULT_MAX_AGE
    max_count: int | None = None
    batch_size: int = DEFAULT_BATCH_SIZE

    def __post_init__(self) -> None:
        _check_age(self.max_age)
        if self.max_count is not None:
            _check_whole(
                "max_count", self.max_count, 1, None, ", or None for no count limit per channel"
            )
        _check_whole("batch_size", self.batch_size, 1, MAX_BATCH_SIZE, "")

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Self:
        """The policy of ``EVENTS_RETENTION_MAX_AGE``, ``EVENTS_RETENTION_MAX_COUNT`` and
        ``EVENTS_RETENTION_BATCH_SIZE`` (see :class:`~aegis_shared.config.Settings`)."""
        if settings is None:
            from aegis_shared.config import Settings

            settings = Settings()
        age = settings.events_retention_max_age
        return cls(
            max_age=None if age is None else timedelta(seconds=age),
            max_count=settings.events_retention_max_count,
            batch_size=settings.events_retention_batch_size,
        )

    @property
    def enabled(self) -> bool:
        """False when neither rule is set: a trim then runs no SQL."""
        return self.max_age is not None or self.max_count is not None


def retention_cut(
    policy: RetentionPolicy,
    *,
    last_position: int,
    first_young: int | None,
    consumed: int | None = None,
) -> int:
    """The highest position of a channel that ``policy`` removes (0: none), from the
    channel's last committed position, with an age limit the first position of an event
    younger than it (``None``: every event is older), and the lowest position its
    after-commit consumers have handled, or the position before their oldest dead letter
    (``None``: it has neither).

    The one place that decides what goes: a rule that keeps events longer returns a lower
    cut here (never a higher one than these rules give, and never above ``last_position``,
    which would reach events not committed when the channel was read). An event a consumer
    has not handled yet is kept whatever its age: the transactional outbox delivers at
    least once, and a trimmed event could not be delivered at all.
    """
    cut = 0
    if policy.max_count is not None:
        cut = max(cut, last_position - policy.max_count)
    if policy.max_age is not None:
        cut = max(cut, last_position if first_young is None else first_young - 1)
    if consumed is not None:
        cut = min(cut, consumed)
    return min(cut, last_position)


def _channels_statement(policy: RetentionPolicy) -> Any:
    c = channels_table.c
    e = events_table.alias("e")
    committed = (e.c.channel == c.channel, e.c.position.is_not(None))
    oldest = select(func.min(e.c.position)).where(*committed).scalar_subquery()
    first_young: ColumnElement[Any]
    if policy.max_age is None:
        first_young = null()
    else:
        # ORDER BY ... LIMIT 1 rather than min(): every planner then walks the
        # (channel, position) index from the oldest event and stops at the first match.
        first_young = (
            select(e.c.position)
            .where(*committed, e.c.created_at >= bindparam("p_cutoff", type_=UTCDateTime()))
            .order_by(e.c.position)
            .limit(1)
            .scalar_subquery()
        )
    consumers, dead = consumers_table.c, dead_letters_table.c
    consumed = (
        select(func.min(consumers.position)).where(consumers.channel == c.channel).scalar_subquery()
    )
    # A dead letter is retried from the log (retry_dead_letter): its event stays too.
    dead_letter = select(func.min(dead.position)).where(dead.channel == c.channel).scalar_subquery()
    return (
        select(c.channel, c.last_position, oldest, first_young, consumed, dead_letter)
        .where(c.channel > bindparam("p_after"))
        .order_by(c.channel)
        .limit(_PAGE)
    )


_DELETE_RANGE: Final = delete(events_table).where(
    events_table.c.channel == bindparam("p_channel"),
    events_table.c.position.between(bindparam("p_lo"), bindparam("p_hi")),
)


async def _delete_range(db: DatabaseManager, channel: str, lo: int, hi: int) -> int:
    async with db.background_session() as session:
        result = await session.execute(
            _DELETE_RANGE, {"p_channel": channel, "p_lo": lo, "p_hi": hi}
        )
        return int(cast(CursorResult[Any], result).rowcount)


async def trim_events(
    db: DatabaseManager,
    policy: RetentionPolicy | None = None,
    *,
    now: datetime | None = None,
    on_batch: OnBatch = None,
) -> int:
    """Remove the events that ``policy`` (a week's worth kept by default) no longer keeps,
    in every channel; returns how many were removed. For a cron job or a CLI command, and
    what :class:`EventSweeper` runs:

    >>> removed = await trim_events(db, RetentionPolicy.from_settings())

    Each batch of at most ``policy.batch_size`` events is its own short transaction on the
    background pool (``on_batch(removed)`` is called after each commit), so publishers and
    readers interleave with it; reading the channels costs one statement per 500 of them.
    ``now``: the time ages are measured from (an aware datetime; the current time by
    default). Events not yet committed and the channels' counters are never touched (see
    the module docstring).
    """
    policy = RetentionPolicy() if policy is None else policy
    if now is None:
        now = utcnow()
    elif not isinstance(now, datetime) or now.tzinfo is None:
        raise ValueError(f"now={now!r} must be an aware datetime, e.g. datetime.now(UTC)")
    if not policy.enabled:
        return 0
    statement = _channels_statement(policy)
    params: dict[str, Any] = {}
    if policy.max_age is not None:
        params["p_cutoff"] = now.astimezone(UTC) - policy.max_age
    removed = 0
    after = ""
    while True:
        async with db.background_engine.connect() as conn:
            page = (await conn.execute(statement, {**params, "p_after": after})).all()
        for channel, last_position, oldest, first_young, consumed, dead_letter in page:
            if oldest is None:
                continue  # nothing retained
            floors = [int(consumed)] if consumed is not None else []
            if dead_letter is not None:
                floors.append(int(dead_letter) - 1)
            cut = retention_cut(
                policy,
                last_position=int(last_position),
                first_young=None if first_young is None else int(first_young),
                consumed=min(floors) if floors else None,
            )
            for lo in range(int(oldest), cut + 1, policy.batch_size):
                count = await _delete_range(db, channel, lo, min(cut, lo + policy.batch_size - 1))
                removed += count
                if on_batch is not None:
                    on_batch(count)
        if len(page) < _PAGE:
            break
        after = page[-1][0]
    if removed:
        logger.info("event retention removed %d events", removed)
    return removed


class EventSweeper(PeriodicSweeper):
    """Runs :func:`trim_events` every ``every`` (plus a random delay up to ``jitter``, so
    the sweepers of several workers rarely run at once) in a task of the event loop.

    >>> sweeper = EventSweeper.from_settings(db)   # in the app's lifespan startup
    >>> sweeper.start()
    >>> await sweeper.stop()                       # and shutdown

    or ``async with sweep_events(db): ...`` around the lifespan. Separate from the
    :class:`~aegis_shared.events.EventHub`: a process may trim without subscribing, and a
    deployment may trim from cron with :func:`trim_events` instead. A failed sweep is
    logged and tried again at the next turn; it never stops the sweeper.
    """

    label = "event retention sweep"
    task_name = "aegis event sweeper"
    logger = logger

    def __init__(
        self,
        db: DatabaseManager,
        policy: RetentionPolicy | None = None,
        *,
        every: timedelta = timedelta(minutes=10),
        jitter: timedelta = timedelta(minutes=2),
    ) -> None:
        if not isinstance(db, DatabaseManager):
            raise TypeError(f"EventSweeper needs a DatabaseManager, got {type(db).__name__}")
        if policy is not None and not isinstance(policy, RetentionPolicy):
            raise TypeError(
                f"EventSweeper(policy=...) takes a RetentionPolicy, got {type(policy).__name__}"
            )
        super().__init__(every=every, jitter=jitter)
        self.db = db
        self.policy = RetentionPolicy() if policy is None else policy
        self.removed = 0

    @classmethod
    def from_settings(cls, db: DatabaseManager, settings: Settings | None = None) -> Self:
        """A sweeper with the policy and ``EVENTS_RETENTION_INTERVAL`` of ``settings``
        (read from the environment by default); its jitter is a fifth of the interval."""
        if settings is None:
            from aegis_shared.config import Settings

            settings = Settings()
        every = timedelta(seconds=settings.events_retention_interval)
        return cls(db, RetentionPolicy.from_settings(settings), every=every, jitter=every / 5)

    async def sweep(self) -> int:
        """Run one trim now; returns how many events it removed."""
        removed = await trim_events(self.db, self.policy)
        self.sweeps += 1
        self.removed += removed
        return removed


@asynccontextmanager
async def sweep_events(
    db: DatabaseManager,
    policy: RetentionPolicy | None = None,
    *,
    every: timedelta = timedelta(minutes=10),
    jitter: timedelta = timedelta(minutes=2),
) -> AsyncIterator[EventSweeper]:
    """Run an :class:`EventSweeper` for the duration of the block (an app's lifespan).

    >>> @asynccontextmanager
    ... async def lifespan(app):
    ...     async with EventHub.from_settings(db) as hub, sweep_events(db):
    ...         yield
    """
    sweeper = EventSweeper(db, policy, every=every, jitter=jitter)
    sweeper.start()
    try:
        yield sweeper
    finally:
        await sweeper.stop()
