"""The few raw driver calls the fast path makes, one function per job, per driver.

SQLAlchemy's async adapters wrap each driver in a synchronous DBAPI facade driven through
greenlets, which is what makes the ORM work but also what a one-row read pays for most.
The fast path therefore talks to the driver connection it checked out of SQLAlchemy's
own pool directly, with SQL that SQLAlchemy compiled. Only this module knows the three
drivers' calling conventions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

Row = Sequence[Any]


async def fetch_all(
    dialect_name: str, connection: Any, sql: str, params: Sequence[Any]
) -> list[Row]:
    """Run ``sql`` with positional ``params`` on a driver connection and return every row.

    One network round trip on PostgreSQL and MariaDB; one hop to aiosqlite's thread on
    SQLite (``execute_fetchall`` instead of execute, fetch and close, which are three).
    """
    if dialect_name == "postgresql":
        # asyncpg prepares the statement once per connection and reuses it by its text
        # (its own statement cache), unless prepared statements are turned off.
        return list(await connection.fetch(sql, *params))
    if dialect_name == "sqlite":
        return list(await connection.execute_fetchall(sql, tuple(params)))
    if dialect_name in ("mysql", "mariadb"):
        async with connection.cursor() as cursor:
            await cursor.execute(sql, tuple(params))
            return list(await cursor.fetchall())
    raise NotImplementedError(f"the fast path does not know the {dialect_name} driver")


def copy_statement(table: str, columns: Sequence[str]) -> str:
    """The ``COPY`` that :func:`copy_records` has asyncpg send, as text for logs and cursor
    events: ``table`` (schema-qualified) and ``columns`` already quoted for PostgreSQL.
    asyncpg builds and sends its own; a listener that rewrites this text changes nothing."""
    return f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT binary)"


async def copy_records(
    connection: Any,
    table: str,
    schema: str | None,
    columns: Sequence[str],
    records: Iterable[Sequence[Any]],
) -> int:
    """``COPY table (columns) FROM STDIN`` the ``records`` through asyncpg's binary COPY.

    Returns the number of rows written. Runs inside whatever transaction the connection
    has open, so a rollback undoes it like any INSERT.

    Why the watch: while asyncpg's COPY waits for the socket to drain, it does not notice
    the connection closing (its flow-control wait is never woken), so a backend killed
    mid-COPY would hang the caller for ever. A termination listener cancels the COPY
    instead, and that is reported as the lost connection it is.
    """
    import asyncpg  # type: ignore[import-untyped]

    copy = asyncio.ensure_future(
        connection.copy_records_to_table(
            table, records=records, columns=list(columns), schema_name=schema
        )
    )
    lost: list[bool] = []

    def on_lost(_: Any) -> None:
        lost.append(True)
        copy.cancel()

    connection.add_termination_listener(on_lost)
    try:
        status: str = await copy
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if lost and not (task is not None and task.cancelling()):
            raise asyncpg.exceptions.ConnectionDoesNotExistError(
                "the connection was closed in the middle of COPY"
            ) from None
        raise
    finally:
        connection.remove_termination_listener(on_lost)
    # asyncpg returns the command tag, "COPY <rows>".
    return int(status.rsplit(" ", 1)[-1])
