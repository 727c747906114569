"""Sessions that say up front that they will write: ``UnitOfWork(write=True)``.

Why: a transaction that begins with a read starts deferred on SQLite (a plain ``BEGIN``,
so readers never wait). When it then writes, SQLite must upgrade its read lock to the
write lock, and if another connection is writing it refuses at once with SQLITE_BUSY
(the busy timeout does not apply there: waiting could deadlock two upgraders). So a dozen
concurrent read-then-write requests fail a few at a time, and their retries can fail the
same way. A session that declared it will write begins each transaction with ``BEGIN
IMMEDIATE`` instead: it waits, up to the busy timeout, for the write lock before its
first read, and writers queue rather than fail. Its reads skip the fast path and run
inside that transaction, so they are under the lock and cannot go stale before the write.

On PostgreSQL and MariaDB no statement changes (their writers lock rows as they write);
the one difference there is that the reads run inside the transaction, through the ORM,
instead of as fast autocommit reads before it.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

from aegis_shared.database.dialects import profile_named
from aegis_shared.database.session import HOLDS_CONNECTION_KEY, AegisSyncSession
from aegis_shared.errors.exceptions import UnitOfWorkStateError

#: Present in ``session.info`` of a session that declared it will write.
WRITE_KEY: Final = "aegis.declared_write"


def declare_write(session: AsyncSession) -> None:
    """Make every transaction of ``session`` a write transaction from its first statement.

    For a session you did not open yourself (``Depends(get_session)``, the request's
    session); a unit of work or ``db.session()`` takes ``write=True`` instead. Call it
    before the session's first statement::

        @app.post("/posts/{post_id}/favorite")
        async def toggle(post_id: int, session: AsyncSession = Depends(get_session)):
            declare_write(session)
            ...
    """
    if HOLDS_CONNECTION_KEY in session.info:
        raise UnitOfWorkStateError(
            "declare_write(session) was called after the session's transaction began, too "
            "late to begin it as a write transaction. Call it before the first statement "
            "(first thing in the handler), or use UnitOfWork(write=True) / "
            "db.session(write=True)."
        )
    session.info[WRITE_KEY] = True


# insert=True: before the fast path's own after_begin listener, which may send the first
# statement of the transaction (the repeated fast reads) and with it the BEGIN.
@event.listens_for(AegisSyncSession, "after_begin", insert=True)
def _begin_as_writer(
    session: Session, transaction: SessionTransaction, connection: Connection
) -> None:
    if WRITE_KEY in session.info:
        profile_named(connection.dialect.name).declare_write(connection)
