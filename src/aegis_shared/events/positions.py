"""Positions in commit order: given just before COMMIT, under the channel's counter lock.

Why not the row id: an id (a sequence, AUTO_INCREMENT) is taken at INSERT, so a reader of
"id > last seen" skips the event of a transaction that took a smaller id and committed
later. Why not at publish time under the counter lock: the lock would then last the whole
transaction and serialize every publisher of the channel for as long as each one runs.

So :func:`~aegis_shared.events.publish` inserts the row with ``position`` NULL, and here,
in SQLAlchemy's ``before_commit`` event of the outermost transaction (whatever commits it:
``db.session()``, a unit of work, the request middleware, ``TransactionManager``,
``async with session.begin()``), for each channel the transaction published to, in name
order:

1. ``SELECT id`` of the transaction's own events without a position (a plain read: other
   transactions' open rows are invisible to it and it waits for none of them);
2. the channel's counter row is raised by their number and locked until COMMIT: one
   ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING`` on PostgreSQL and SQLite; MariaDB has
   no RETURNING on an upsert, so ``INSERT ... ON DUPLICATE KEY UPDATE`` then a ``SELECT``
   of the value (its own row version). The upsert also creates the counter of a new
   channel without a race. On MariaDB the channel is the counter's primary key, so the
   upsert locks that one index record, no gap: other channels never wait;
3. the events get the positions below the new counter value, in publish order (one
   executemany UPDATE by id).

On PostgreSQL the three steps are one statement (``_ASSIGN_POSTGRESQL``, with CTEs).

A second transaction committing on the same channel waits at step 2 until the first has
committed, then reads its counter value: positions follow commit order, with no gap (a
transaction that fails after step 2 rolls the counter back too), and the lock is held only
between step 2 and COMMIT. Channels are taken in name order so that two transactions
publishing to the same channels cannot deadlock. Readers see only committed rows, which
always have a position.
"""

from __future__ import annotations

from typing import Any, Final

from sqlalchemy import bindparam, event, select, text, update
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

from aegis_shared.events import wakeups
from aegis_shared.events.tables import channels_table, events_table

#: ``session.info``: the channels this transaction published to (maybe rolled back since).
PENDING_KEY: Final = "aegis.events.pending"
#: ``session.info``: the channels given positions by the COMMIT under way.
COMMITTING_KEY: Final = "aegis.events.committing"


def mark_pending(session: AsyncSession, channel: str) -> None:
    """Record that ``session``'s transaction published to ``channel``."""
    pending: set[str] = session.info.setdefault(PENDING_KEY, set())
    pending.add(channel)


def _raise_counter(session: Session, channel: str, count: int) -> int:
    """Raise ``channel``'s counter by ``count`` and return its new value (row locked)."""
    c = channels_table.c
    dialect = session.get_bind().dialect
    values = {"channel": channel, "last_position": count}
    raised = c.last_position + count
    if dialect.name in ("postgresql", "sqlite"):
        module: Any = postgresql if dialect.name == "postgresql" else sqlite
        statement = (
            module.insert(channels_table)
            .values(values)
            .on_conflict_do_update(index_elements=[c.channel], set_={"last_position": raised})
            .returning(c.last_position)
        )
        return int(session.execute(statement).scalar_one())
    statement = (
        mysql.insert(channels_table).values(values).on_duplicate_key_update(last_position=raised)
    )
    session.execute(statement)
    return int(session.execute(select(c.last_position).where(c.channel == channel)).scalar_one())


#: PostgreSQL: steps 1 to 3 in one statement (one round trip instead of three, for every
#: publishing commit). Its CTEs share one snapshot, which sees the transaction's own rows;
#: the upsert waits for the counter row's lock and then raises the committed value, as the
#: three statements do.
_ASSIGN_POSTGRESQL: Final = text(
    """
    WITH pending AS (
        SELECT id, row_number() OVER (ORDER BY id) AS n, count(*) OVER () AS total
        FROM aegis_events WHERE channel = :channel AND position IS NULL
    ), counter AS (
        INSERT INTO aegis_event_channels (channel, last_position)
        SELECT :channel, count(*) FROM pending HAVING count(*) > 0
        ON CONFLICT (channel) DO UPDATE
        SET last_position = aegis_event_channels.last_position + EXCLUDED.last_position
        RETURNING last_position
    )
    UPDATE aegis_events AS e SET position = counter.last_position - pending.total + pending.n
    FROM pending, counter WHERE e.id = pending.id
    RETURNING e.position
    """
)


def _assign(session: Session, channel: str) -> bool:
    if session.get_bind().dialect.name == "postgresql":
        given = session.execute(_ASSIGN_POSTGRESQL, {"channel": channel}).scalars().all()
        return bool(given)  # none: its events were rolled back with a SAVEPOINT
    e = events_table.c
    ids = list(
        session.execute(
            select(e.id).where(e.channel == channel, e.position.is_(None)).order_by(e.id)
        ).scalars()
    )
    if not ids:  # its events were rolled back with a SAVEPOINT
        return False
    last = _raise_counter(session, channel, len(ids))
    first = last - len(ids) + 1
    session.execute(
        update(events_table)
        .where(e.id == bindparam("event_id"))
        .values(position=bindparam("new_position")),
        [{"event_id": id_, "new_position": first + n} for n, id_ in enumerate(ids)],
    )
    return True


@event.listens_for(Session, "before_commit")
def _before_commit(session: Session) -> None:
    pending: set[str] | None = session.info.get(PENDING_KEY)
    if not pending or session.in_nested_transaction():
        return  # a SAVEPOINT release: positions wait for the outermost COMMIT
    committing = [channel for channel in sorted(pending) if _assign(session, channel)]
    session.info.pop(PENDING_KEY, None)
    if committing:
        session.info[COMMITTING_KEY] = committing


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return
    committed: list[str] | None = session.info.pop(COMMITTING_KEY, None)
    if committed:
        bind = session.get_bind()
        if isinstance(bind, Engine):
            wakeups.committed(bind, committed)


@event.listens_for(Session, "after_transaction_end")
def _forget(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # the outermost ended: committed or rolled back
        session.info.pop(PENDING_KEY, None)
        session.info.pop(COMMITTING_KEY, None)
