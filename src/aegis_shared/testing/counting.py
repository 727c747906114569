"""Count the SQL statements a block of code sends, to catch N+1 queries in tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from aegis_shared.database.manager import DatabaseManager
from aegis_shared.database.registry import get_database
from aegis_shared.testing.isolation import issued_by_isolation

Target = DatabaseManager | AsyncEngine | Engine | None


class QueryCounter:
    """The statements sent while the counter was active (``count``, ``statements``); not
    the savepoints an :func:`~aegis_shared.testing.isolated_session` makes for itself."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    @property
    def count(self) -> int:
        """How many statements were sent."""
        return len(self.statements)

    def _record(
        self,
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        if not issued_by_isolation(conn, statement):  # only what the code under test sends
            self.statements.append(statement)

    def __repr__(self) -> str:
        return f"<QueryCounter {self.count} statements>"


def _engines(target: Target) -> list[Engine]:
    if target is None:
        target = get_database()
    if isinstance(target, DatabaseManager):
        engines = [target.engine.sync_engine, target.background_engine.sync_engine]
        return list(dict.fromkeys(engines))
    if isinstance(target, AsyncEngine):
        return [target.sync_engine]
    return [target]


@contextmanager
def count_queries(target: Target = None) -> Iterator[QueryCounter]:
    """Count statements sent through ``target`` (a manager, an engine, or the default
    manager) while the block runs, fast-path reads included (they reach the same cursor
    events)."""
    counter = QueryCounter()
    engines = _engines(target)
    for engine in engines:
        event.listen(engine, "before_cursor_execute", counter._record)
    try:
        yield counter
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", counter._record)


@contextmanager
def assert_max_queries(limit: int, target: Target = None) -> Iterator[QueryCounter]:
    """Fail with the list of statements if the block sends more than ``limit`` of them."""
    with count_queries(target) as counter:
        yield counter
    if counter.count > limit:
        listing = "\n".join(f"  {i}. {s}" for i, s in enumerate(counter.statements, 1))
        raise AssertionError(
            f"expected at most {limit} SQL statements, {counter.count} were sent "
            f"(an N+1 query? load relationships with selectinload):\n{listing}"
        )
