"""A session whose every change is undone afterwards: one outer transaction, savepoints
for the code under test."""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from aegis_shared.database.session import AegisSession


@dataclass
class _Savepoints:
    """The savepoints an isolated session's connection made for the isolation itself."""

    names: set[str] = field(default_factory=set)
    next_is_ours: bool = False


# Keyed by the connection object (one per isolated session), not kept in connection.info,
# which belongs to the pooled driver connection and would outlive the session.
_isolation_savepoints: weakref.WeakKeyDictionary[Connection, _Savepoints] = (
    weakref.WeakKeyDictionary()
)


def issued_by_isolation(connection: Connection, statement: str) -> bool:
    """True for a ``SAVEPOINT``, ``RELEASE SAVEPOINT`` or ``ROLLBACK TO SAVEPOINT`` that
    :func:`isolated_session` sends for itself rather than for the code under test.

    Statement counters call this so that a test counts what its code would send on a
    normal session: there, ``commit()`` ends the transaction and sends no SAVEPOINT.
    """
    ours = _isolation_savepoints.get(connection)
    if ours is None:
        return False
    words = statement.split()
    if len(words) < 2 or words[-2].upper() != "SAVEPOINT":
        return False
    name = words[-1].strip('"`')
    if words[0].upper() == "SAVEPOINT" and ours.next_is_ours:
        ours.names.add(name)
        ours.next_is_ours = False
    return name in ours.names


def _track_savepoints(connection: Connection) -> None:
    ours = _isolation_savepoints[connection] = _Savepoints()

    # SQLAlchemy names a savepoint only after this event, so it marks the next SAVEPOINT
    # statement instead. The session's own savepoint (join_transaction_mode=
    # "create_savepoint") is the only one made while no other savepoint is open: the code
    # under test makes its savepoints (begin_nested, TransactionManager) inside it.
    @event.listens_for(connection, "savepoint")
    def mark(conn: Connection, name: str | None) -> None:
        ours.next_is_ours = not conn.in_nested_transaction()

    @event.listens_for(connection, "before_cursor_execute")
    def note(conn: Connection, cursor: Any, statement: str, *args: Any) -> None:
        issued_by_isolation(conn, statement)  # records the name of our SAVEPOINT


@asynccontextmanager
async def isolated_session(engine: AsyncEngine) -> AsyncIterator[AegisSession]:
    """Yield a session inside a transaction that is rolled back at the end.

    ``commit()`` in the code under test only releases a SAVEPOINT
    (``join_transaction_mode="create_savepoint"``), so tests see their own writes and
    leave nothing behind, on PostgreSQL, SQLite and MariaDB alike. Those SAVEPOINTs are
    not counted by :func:`~aegis_shared.testing.count_queries`.
    """
    async with engine.connect() as connection:
        assert connection.sync_connection is not None  # set once connected
        _track_savepoints(connection.sync_connection)
        transaction = await connection.begin()
        session = AegisSession(
            bind=connection,
            expire_on_commit=False,
            join_transaction_mode="create_savepoint",
        )
        try:
            yield session
        finally:
            await session.close()
            if transaction.is_active:
                await transaction.rollback()
