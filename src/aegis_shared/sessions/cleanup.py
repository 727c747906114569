"""Deleting expired sessions in bounded batches: the one place that knows the dialects.

Each batch is its own short transaction, so a cleanup never holds locks on many rows at
once, never grows one huge transaction (WAL, undo log), and requests interleave with it.
Child rows go with their session through ``ON DELETE CASCADE``.

PostgreSQL: the session table has no index on ``expires_at`` (every touch writes that
column, and an index on it would make those updates non-HOT; see ``models.py``). So
cleanup walks the table once in ranges of pages:
``WHERE ctid >= '(a,0)'::tid AND ctid < '(b,0)'::tid AND expires_at <= :now`` is a TID
range scan (PostgreSQL 14 and later) that reads only pages a to b-1. On older servers the
same statements are still correct but scan the whole table each time.

SQLite and MariaDB: select up to ``batch_size`` expired keys through the ``expires_at``
index, then delete those keys (checking expiry again) in a transaction of their own.
MariaDB refuses LIMIT inside an IN subquery, hence two statements; reading outside the
deleting transaction also lets SQLite open that one with BEGIN IMMEDIATE.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final, cast

from sqlalchemy import Table, bindparam, delete, select, text
from sqlalchemy.engine import CursorResult, Engine

from aegis_shared.database import DatabaseManager
from aegis_shared.models.types import UTCDateTime

logger = logging.getLogger("aegis_shared.sessions")

#: Called with the number of sessions a committed batch removed.
OnBatch = Callable[[int], None] | None

#: Bytes of a heap page header and of one tuple's line pointer plus minimal header: the
#: most tuples a PostgreSQL page can hold is (block size - 24) // 28 (291 for 8 kB).
_PAGE_HEADER: Final = 24
_MIN_TUPLE: Final = 28


def rows_matched(result: Any) -> int:
    """The number of rows an UPDATE or DELETE matched."""
    return int(cast(CursorResult[Any], result).rowcount)


def postgresql_batch_statement(table: Table) -> Any:
    """The DELETE of one batch of pages on PostgreSQL (parameters ``p_lo`` and ``p_hi``,
    first and past-last page as ``'(n,0)'`` strings, and ``p_now``).

    The bounds arrive as text and are cast to ``tid``: asyncpg would otherwise want a
    Python tuple for a ``tid`` parameter. A cast of a parameter is still a constant to the
    planner, so the scan stays a TID range scan.
    """
    return delete(table).where(
        text("ctid >= CAST(CAST(:p_lo AS TEXT) AS tid)"),
        text("ctid < CAST(CAST(:p_hi AS TEXT) AS tid)"),
        table.c.expires_at <= bindparam("p_now", type_=UTCDateTime()),
    )


async def _postgresql_pages(db: DatabaseManager, table: Table, batch_size: int) -> tuple[int, int]:
    """The table's size in pages now, and how many pages hold about ``batch_size`` rows."""
    name = db.engine.dialect.identifier_preparer.format_table(table)
    async with db.background_session() as session:
        result = await session.execute(
            text(
                "SELECT pg_relation_size(c.oid) / current_setting('block_size')::int,"
                " c.reltuples, c.relpages, current_setting('block_size')::int"
                " FROM pg_class c WHERE c.oid = CAST(:name AS regclass)"
            ),
            {"name": name},
        )
        row = tuple(result.one())
    pages, reltuples, relpages, block_size = int(row[0]), float(row[1]), int(row[2]), int(row[3])
    if reltuples > 0 and relpages > 0:
        rows_per_page = reltuples / relpages  # as of the last VACUUM or ANALYZE
    else:
        # Never analyzed: assume full pages of the smallest tuples, so a batch stays small.
        rows_per_page = (block_size - _PAGE_HEADER) / _MIN_TUPLE
    return pages, max(1, int(batch_size / rows_per_page))


async def _delete_postgresql(
    db: DatabaseManager, table: Table, now: datetime, batch_size: int, on_batch: OnBatch
) -> int:
    pages, step = await _postgresql_pages(db, table, batch_size)
    statement = postgresql_batch_statement(table)
    deleted = 0
    # Pages added while this runs hold new rows (inserts, non-HOT updates): the next
    # cleanup sees them.
    for first in range(0, pages, step):
        async with db.background_session() as session:
            result = await session.execute(
                statement, {"p_lo": f"({first},0)", "p_hi": f"({first + step},0)", "p_now": now}
            )
            removed = rows_matched(result)
        deleted += removed
        if on_batch is not None:
            on_batch(removed)
    return deleted


async def _delete_by_keys(
    db: DatabaseManager,
    table: Table,
    now: datetime,
    batch_size: int,
    on_batch: OnBatch,
    quiet: Engine | None,
) -> int:
    expired = table.c.expires_at <= bindparam("p_now", type_=UTCDateTime())
    pick = select(table.c.session_id).where(expired).order_by(table.c.expires_at).limit(batch_size)
    remove = delete(table).where(
        table.c.session_id.in_(bindparam("p_keys", expanding=True)), expired
    )
    deleted = 0
    while True:
        async with db.background_session() as session:
            keys = list((await session.execute(pick, {"p_now": now})).scalars())
        if not keys:
            break
        async with db.background_session() as session:
            # The keys are session digests: with ``quiet`` (an engine that hides parameters)
            # they stay out of the echo log and of error messages.
            bind = {} if quiet is None else {"bind_arguments": {"bind": quiet}}
            params = {"p_keys": keys, "p_now": now}
            removed = rows_matched(await session.execute(remove, params, **bind))
        deleted += removed
        if on_batch is not None:
            on_batch(removed)
        # A short batch was the last one. None removed means another cleanup took these
        # rows first; it carries on, so this one stops rather than race it.
        if len(keys) < batch_size or removed == 0:
            break
    return deleted


async def delete_expired(
    db: DatabaseManager,
    table: Table,
    now: datetime,
    batch_size: int,
    on_batch: OnBatch = None,
    quiet: Engine | None = None,
) -> int:
    """Delete the sessions of ``table`` that expired at ``now`` (and, by cascade, their
    children) in transactions of about ``batch_size`` rows; returns how many were deleted.

    ``on_batch(removed)`` is called after each committed batch, for progress reports.
    ``quiet``, a view of the background engine that hides parameters, runs the statements
    that carry session keys.
    """
    if db.dialect_name == "postgresql":
        deleted = await _delete_postgresql(db, table, now, batch_size, on_batch)
    else:
        deleted = await _delete_by_keys(db, table, now, batch_size, on_batch, quiet)
    logger.debug("deleted %d expired sessions from %s", deleted, table.name)
    return deleted
