"""The one seam for what differs between PostgreSQL, SQLite and MariaDB at the engine level.

Each backend gets a :class:`DialectProfile` that says how to build its engine and what to
run on each new connection. Nothing else in the library branches on the backend name for
engine set-up.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass
from typing import Any

import aiosqlite
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection
from sqlalchemy.engine.interfaces import DBAPIConnection, ExecutionContext
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry, PoolResetState

from aegis_shared.database.cursor_events import own_listener

_SQLITE_PENDING_BEGIN = "aegis.sqlite_pending_begin"
_WRITE_PREFIX = re.compile(r"^\s*(INSERT|UPDATE|DELETE|REPLACE|CREATE|DROP|ALTER)\b", re.I)


@dataclass(frozen=True)
class EngineOptions:
    """What a caller asked for, independent of the backend."""

    statement_timeout: float | None = None
    sqlite_busy_timeout: float = 30.0
    application_name: str = "aegis-shared"
    prepared_statement_cache_size: int | None = None
    prepared_statements: bool = True


class DialectProfile:
    """Engine set-up for one backend; subclasses override what differs."""

    name = "generic"

    def connect_args(self, url: URL, options: EngineOptions) -> dict[str, Any]:
        """Driver keyword arguments for each new connection."""
        return {}

    def engine_kwargs(self) -> dict[str, Any]:
        """Extra ``create_async_engine`` arguments."""
        return {}

    def install(self, engine: AsyncEngine, url: URL, options: EngineOptions) -> None:
        """Attach connection and transaction events to ``engine``."""


class PostgresProfile(DialectProfile):
    """asyncpg: application name and statement timeout as server settings."""

    name = "postgresql"

    def connect_args(self, url: URL, options: EngineOptions) -> dict[str, Any]:
        settings = {"application_name": options.application_name}
        if options.statement_timeout:
            settings["statement_timeout"] = str(int(options.statement_timeout * 1000))
        args: dict[str, Any] = {"server_settings": settings}
        if not options.prepared_statements:
            # Behind pgbouncer in transaction mode a named prepared statement may land on
            # another server connection. With both caches at 0, asyncpg (the fast path)
            # uses only the unnamed statement, and SQLAlchemy's adapter names each of its
            # one-off statements uniquely so two clients never collide.
            args["prepared_statement_cache_size"] = 0
            args["statement_cache_size"] = 0
            args["prepared_statement_name_func"] = _unique_statement_name
        elif options.prepared_statement_cache_size is not None:
            args["prepared_statement_cache_size"] = options.prepared_statement_cache_size
            args["statement_cache_size"] = options.prepared_statement_cache_size
        return args


def _unique_statement_name() -> str:
    return f"__aegis_{uuid.uuid4().hex}__"


class MariaDBProfile(DialectProfile):
    """asyncmy: statement timeout through MariaDB's ``max_statement_time``."""

    name = "mariadb"

    def connect_args(self, url: URL, options: EngineOptions) -> dict[str, Any]:
        return {"charset": "utf8mb4"}

    def install(self, engine: AsyncEngine, url: URL, options: EngineOptions) -> None:
        timeout = options.statement_timeout
        if not timeout:
            return

        @event.listens_for(engine.sync_engine, "connect")
        def _set_timeout(dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute(f"SET SESSION max_statement_time={float(timeout)}")
            cursor.close()


async def _open_sqlite(*args: Any, **kwargs: Any) -> aiosqlite.Connection:
    """``aiosqlite.connect``; when it fails, wait until its worker thread has ended.

    Why: on a failed connect aiosqlite stops its thread without waiting for it, and the
    thread then reports back to the event loop. If the loop has closed meanwhile (a
    start-up that fails and exits, a test that ends) the thread dies with "Event loop is
    closed". SQLAlchemy's own creator also makes the thread a daemon; so do we.
    """
    connection = aiosqlite.connect(*args, **kwargs)
    thread: Any = getattr(connection, "_thread", connection)  # a Thread itself before 0.22
    thread.daemon = True
    try:
        return await connection
    except Exception:
        await asyncio.to_thread(thread.join, 5.0)
        raise


class SQLiteProfile(DialectProfile):
    """aiosqlite as a real embedded database.

    Foreign keys on, WAL (for file databases) and a busy timeout. Python's sqlite3 module
    would issue its own deferred BEGIN at the first write, too late to wait for the lock, so
    we switch it off and begin ourselves when the first statement runs: ``BEGIN IMMEDIATE``
    when that statement writes (the transaction queues for the write lock up front instead
    of failing with "database is locked"), a plain deferred ``BEGIN`` for reads so readers
    never wait on writers. A deferred transaction that writes later may still meet a
    concurrent writer; that surfaces as TransactionConflictError, which @with_db_retry retries.
    """

    name = "sqlite"

    def connect_args(self, url: URL, options: EngineOptions) -> dict[str, Any]:
        return {"timeout": options.sqlite_busy_timeout, "async_creator_fn": _open_sqlite}

    def engine_kwargs(self) -> dict[str, Any]:
        # The pool's own reset sends a rollback through aiosqlite's thread even when no
        # transaction is open; _reset_if_needed below rolls back only when one is.
        return {"pool_reset_on_return": None}

    def install(self, engine: AsyncEngine, url: URL, options: EngineOptions) -> None:
        memory = (url.database or ":memory:") == ":memory:"
        busy_ms = int(options.sqlite_busy_timeout * 1000)

        @event.listens_for(engine.sync_engine, "reset")
        def _reset_if_needed(
            dbapi_connection: Any, record: ConnectionPoolEntry, state: PoolResetState
        ) -> None:
            if state.terminate_only or state.transaction_was_reset or not state.asyncio_safe:
                return
            if dbapi_connection.driver_connection.in_transaction:
                dbapi_connection.rollback()

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
            if not memory:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.info[_SQLITE_PENDING_BEGIN] = True

        # retval=True so the engine holds this very function, which own_listener marks as
        # irrelevant to fast reads (they run outside any transaction): an engine with only
        # this listener counts as unwatched, and fast reads skip the cursor events.
        @event.listens_for(engine.sync_engine, "before_cursor_execute", retval=True)
        @own_listener
        def _begin_lazily(
            conn: Connection,
            cursor: Any,
            statement: str,
            parameters: Any,
            context: ExecutionContext | None,
            executemany: bool,
        ) -> tuple[str, Any]:
            if not conn.info.pop(_SQLITE_PENDING_BEGIN, False):
                return statement, parameters
            writes = bool(_WRITE_PREFIX.match(statement)) or bool(
                context is not None
                and any(
                    getattr(context, flag, False) for flag in ("isinsert", "isupdate", "isdelete")
                )
            )
            begin = conn.connection.dbapi_connection
            assert begin is not None
            own = begin.cursor()
            own.execute("BEGIN IMMEDIATE" if writes else "BEGIN")
            own.close()
            return statement, parameters

        @event.listens_for(engine.sync_engine, "commit")
        def _on_commit(conn: Connection) -> None:
            conn.info.pop(_SQLITE_PENDING_BEGIN, None)

        @event.listens_for(engine.sync_engine, "rollback")
        def _on_rollback(conn: Connection) -> None:
            conn.info.pop(_SQLITE_PENDING_BEGIN, None)


def profile_for(url: URL) -> DialectProfile:
    """The profile of ``url``'s backend."""
    backend = url.get_backend_name()
    if backend == "postgresql":
        return PostgresProfile()
    if backend in ("mysql", "mariadb"):
        return MariaDBProfile()
    if backend == "sqlite":
        return SQLiteProfile()
    return DialectProfile()
