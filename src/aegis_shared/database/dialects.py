"""The one seam for what differs between PostgreSQL, SQLite and MariaDB at the engine level.

Each backend gets a :class:`DialectProfile` that says how to build its engine and what to
run on each new connection. Nothing else in the library branches on the backend name for
engine set-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import aiosqlite
from sqlalchemy import BigInteger, Integer, SmallInteger, event
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import URL, Connection, Dialect
from sqlalchemy.engine.interfaces import DBAPIConnection, ExecutionContext
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry, PoolResetState
from sqlalchemy.types import TypeEngine

from aegis_shared.database.cursor_events import own_listener

#: ``Connection.info`` key: the BEGIN the connection's next statement must send first.
_SQLITE_PENDING_BEGIN = "aegis.sqlite_pending_begin"
_BEGIN_FOR_READ = "BEGIN"
_BEGIN_FOR_WRITE = "BEGIN IMMEDIATE"
_WRITE_PREFIX = re.compile(r"^\s*(INSERT|UPDATE|DELETE|REPLACE|CREATE|DROP|ALTER)\b", re.I)
#: Integer width in bits by SQLAlchemy type class (see DialectProfile.integer_bits).
IntegerBits = Mapping[type[TypeEngine[Any]], int]


@dataclass(frozen=True)
class EngineOptions:
    """What a caller asked for, independent of the backend."""

    statement_timeout: float | None = None
    #: Seconds a new connection may take (TCP, TLS and login) before it fails.
    connect_timeout: float = 10.0
    #: Seconds the client waits for any answer of the server before it gives the
    #: connection up (``None``: forever). Longer than ``statement_timeout``, so the server
    #: cancels a slow statement first; this only ends a stall (a partition, a dead host).
    command_timeout: float | None = None
    sqlite_busy_timeout: float = 30.0
    application_name: str = "aegis-shared"
    prepared_statement_cache_size: int | None = None
    prepared_statements: bool = True
    #: Behind a transaction pooler (pgbouncer, pool_mode = transaction): nothing that
    #: outlives a transaction and no startup parameter it refuses (PostgreSQL only).
    pgbouncer: bool = False


class DialectProfile:
    """Engine set-up for one backend; subclasses override what differs."""

    name = "generic"
    #: How many bits the integers of each SQLAlchemy integer type have on this backend;
    #: the entry nearest the column's type in its class hierarchy applies. Empty: the
    #: range is unknown, so values are sent as they are.
    integer_bits: ClassVar[IntegerBits] = {}
    #: True when the backend stores UNSIGNED integers (a type with ``unsigned=True``).
    unsigned_integers: ClassVar[bool] = False
    #: ``connect_args`` that SQLAlchemy's adapter takes for itself and the driver's own
    #: ``connect`` would refuse (see engine.driver_connect_kwargs).
    adapter_only_connect_args: ClassVar[tuple[str, ...]] = ()

    def declare_write(self, connection: Connection) -> None:
        """Make the transaction just begun on ``connection`` a write transaction from its
        first statement (``UnitOfWork(write=True)``).

        Nothing to do by default: PostgreSQL and MariaDB lock rows as a transaction writes
        them, so a transaction that reads first can always write later.
        """

    def integer_range(self, type_: TypeEngine[Any], dialect: Dialect) -> tuple[int, int] | None:
        """The smallest and largest value a column of ``type_`` holds on this backend, or
        ``None`` when it is not an integer type this profile knows."""
        # The type the dialect really uses: a TypeDecorator's impl, a with_variant() choice.
        actual = type_._unwrapped_dialect_impl(dialect)
        for cls in type(actual).__mro__:
            bits = self.integer_bits.get(cls)
            if bits is not None:
                if self.unsigned_integers and getattr(actual, "unsigned", False):
                    return 0, (1 << bits) - 1
                return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        return None

    def connect_args(self, url: URL, options: EngineOptions) -> dict[str, Any]:
        """Driver keyword arguments for each new connection."""
        return {}

    def engine_kwargs(self) -> dict[str, Any]:
        """Extra ``create_async_engine`` arguments."""
        return {}

    def install(self, engine: AsyncEngine, url: URL, options: EngineOptions) -> None:
        """Attach connection and transaction events to ``engine``."""

    def is_closed(self, dbapi_connection: Any) -> bool:
        """True when the driver already knows the connection is gone (the server closed
        it), which costs no round trip to find out."""
        return False

    def refused_before_sending(self, error: BaseException) -> bool:
        """True when ``error`` is the driver refusing a call before writing anything (its
        own state checks), so the statement cannot have reached the server."""
        return False


def merge_connect_args(ours: dict[str, Any], theirs: dict[str, Any] | None) -> dict[str, Any]:
    """The caller's ``connect_args`` over the profile's; a dictionary in both (asyncpg's
    ``server_settings``) is merged key by key, the caller's values winning, so passing
    one server setting does not drop the library's ``statement_timeout``."""
    merged = dict(ours)
    for key, value in (theirs or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


#: Seconds a graceful close (asyncpg's Terminate message) may wait for the server.
GRACEFUL_CLOSE_TIMEOUT = 0.5


def _terminate_at_once(dbapi_connection: Any) -> None:
    """Drop an invalidated asyncpg connection without waiting for the server.

    Why: SQLAlchemy first tries a graceful close that waits up to 2 s, which on a stalled
    network is 2 s added to every failure (and to a cancellation, which must be prompt).
    A connection is invalidated because it broke or its state is unknown; there is nothing
    to say to the server on it.
    """
    dbapi_connection.driver_connection.terminate()


def _bounded_close() -> Any:
    """A ``do_close`` for asyncpg that never waits on the server longer than
    :data:`GRACEFUL_CLOSE_TIMEOUT`.

    Why: asyncpg's own ``close()`` waits for ever, so a stalled network would hang
    ``DatabaseManager.close()``. Once one graceful close has timed out, the server is taken
    as unreachable for a second and the next closes (the rest of the pool, disposed one by
    one) terminate at once, so closing a whole pool costs one timeout, not one each.
    """
    from sqlalchemy.util.concurrency import await_only

    stalled_until = 0.0

    def close(dbapi_connection: Any) -> None:
        nonlocal stalled_until
        driver = dbapi_connection.driver_connection
        if time.monotonic() < stalled_until:
            driver.terminate()
            return
        try:
            await_only(driver.close(timeout=GRACEFUL_CLOSE_TIMEOUT))
        except OSError:  # TimeoutError included
            stalled_until = time.monotonic() + 1.0
            driver.terminate()
        except BaseException:
            driver.terminate()
            raise

    return close


class PostgresProfile(DialectProfile):
    """asyncpg: application name and statement timeout as server settings, client-side
    connect and command timeouts, and closes that never wait on a stalled server."""

    name = "postgresql"
    integer_bits: ClassVar[IntegerBits] = {SmallInteger: 16, Integer: 32, BigInteger: 64}
    adapter_only_connect_args: ClassVar[tuple[str, ...]] = (
        "async_creator_fn",
        "prepared_statement_cache_size",
        "prepared_statement_name_func",
    )

    def connect_args(self, url: URL, options: EngineOptions) -> dict[str, Any]:
        settings = {"application_name": options.application_name}
        if options.statement_timeout and not options.pgbouncer:
            # pgbouncer refuses it as a startup parameter ("unsupported startup parameter"):
            # there it is SET LOCAL in each transaction instead (install()).
            settings["statement_timeout"] = str(int(options.statement_timeout * 1000))
        args: dict[str, Any] = {
            "server_settings": settings,
            "timeout": options.connect_timeout,
            "command_timeout": options.command_timeout,
        }
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

    def install(self, engine: AsyncEngine, url: URL, options: EngineOptions) -> None:
        # The dialect's own hooks, replaced on this engine's dialect instance only (the
        # pool calls dialect.do_terminate / do_close; SQLAlchemy offers no event there).
        dialect: Any = engine.sync_engine.dialect
        dialect.do_terminate = _terminate_at_once
        dialect.do_close = _bounded_close()
        if options.pgbouncer and options.statement_timeout:
            statement = f"SET LOCAL statement_timeout = {int(options.statement_timeout * 1000)}"

            # A transaction pooler keeps what a transaction sets with SET LOCAL, and only
            # that: one statement per transaction. Reads outside a transaction (the fast
            # path) are bounded by the client's command_timeout, which cancels them.
            @event.listens_for(engine.sync_engine, "begin")
            def _statement_timeout(conn: Any) -> None:
                conn.exec_driver_sql(statement)

    def is_closed(self, dbapi_connection: Any) -> bool:
        return bool(dbapi_connection.driver_connection.is_closed())

    def refused_before_sending(self, error: BaseException) -> bool:
        # asyncpg checks its protocol state before it writes a message: "cannot perform
        # operation: ..." (InterfaceError) and "cannot switch to state ..." (raised while
        # it is still handling the server's goodbye on a link being closed) mean the
        # statement never left the client.
        import asyncpg  # type: ignore[import-untyped]

        seen: set[int] = set()
        item: BaseException | None = error
        while item is not None and id(item) not in seen:
            seen.add(id(item))
            if isinstance(item, asyncpg.InterfaceError):
                return True
            if isinstance(item, asyncpg.InternalClientError) and "cannot switch to state" in str(
                item
            ):
                return True
            item = item.__cause__ or item.__context__
        return False


def _unique_statement_name() -> str:
    return f"__aegis_{uuid.uuid4().hex}__"


def _asyncmy_connect_within(timeout: float) -> Any:
    """``asyncmy.connect`` bounded by ``timeout`` as a whole.

    Why: asyncmy's own ``connect_timeout`` covers only opening the socket; the server's
    greeting and the login then wait on the read timeout, so a server that accepts and
    never answers would hold a connect for the command timeout instead.
    """

    async def connect(*args: Any, **kwargs: Any) -> Any:
        import asyncmy

        return await asyncio.wait_for(asyncmy.connect(*args, **kwargs), timeout)

    return connect


class MariaDBProfile(DialectProfile):
    """asyncmy: statement timeout through MariaDB's ``max_statement_time``; connect and
    read timeouts on the client."""

    name = "mariadb"
    integer_bits: ClassVar[IntegerBits] = {
        mysql.TINYINT: 8,
        SmallInteger: 16,
        mysql.MEDIUMINT: 24,
        Integer: 32,
        BigInteger: 64,
    }
    unsigned_integers = True

    def connect_args(self, url: URL, options: EngineOptions) -> dict[str, Any]:
        args: dict[str, Any] = {
            "charset": "utf8mb4",
            "connect_timeout": options.connect_timeout,
            "async_creator_fn": _asyncmy_connect_within(options.connect_timeout),
        }
        if options.command_timeout:
            args["read_timeout"] = options.command_timeout
        return args

    def is_closed(self, dbapi_connection: Any) -> bool:
        transport = getattr(dbapi_connection.driver_connection, "_transport", None)
        return transport is None or transport.is_closing()

    def install(self, engine: AsyncEngine, url: URL, options: EngineOptions) -> None:
        timeout = options.statement_timeout
        if not timeout:
            return

        @event.listens_for(engine.sync_engine, "connect")
        def _set_timeout(dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute(f"SET SESSION max_statement_time={float(timeout)}")
            cursor.close()


class _RollbackOnClose(sqlite3.Connection):
    """A sqlite3 connection that ends its open transaction before it closes.

    Why: a task cancelled between a query and its fetch leaves that cursor's statement
    active, and ``close()`` then only turns the connection into a "zombie" that SQLite
    frees when the statement is finalized, that is when the garbage collector reaches the
    orphaned cursor. Until then the zombie keeps its transaction, and with it the write
    lock: every other writer waits out the busy timeout and fails. The pool closes such a
    connection when it drops it (a cancellation invalidates it); the rollback here aborts
    the statement and releases the lock at once.
    """

    def close(self) -> None:
        if self.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.rollback()
        super().close()


async def _open_sqlite(*args: Any, **kwargs: Any) -> aiosqlite.Connection:
    """``aiosqlite.connect`` on :class:`_RollbackOnClose`; when it fails, wait until its
    worker thread has ended.

    Why: on a failed connect aiosqlite stops its thread without waiting for it, and the
    thread then reports back to the event loop. If the loop has closed meanwhile (a
    start-up that fails and exits, a test that ends) the thread dies with "Event loop is
    closed". SQLAlchemy's own creator also makes the thread a daemon; so do we.
    """
    kwargs.setdefault("factory", _RollbackOnClose)
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
    concurrent writer: SQLite refuses its lock upgrade at once (the busy timeout does not
    apply), which surfaces as TransactionConflictError. A transaction declared a writer
    (:meth:`declare_write`) begins with ``BEGIN IMMEDIATE`` whatever its first statement.
    """

    name = "sqlite"
    # SQLite stores every integer, whatever the declared type, in up to 8 bytes.
    integer_bits: ClassVar[IntegerBits] = {Integer: 64}

    def connect_args(self, url: URL, options: EngineOptions) -> dict[str, Any]:
        return {"timeout": options.sqlite_busy_timeout, "async_creator_fn": _open_sqlite}

    def engine_kwargs(self) -> dict[str, Any]:
        # The pool's own reset sends a rollback through aiosqlite's thread even when no
        # transaction is open; _reset_if_needed below rolls back only when one is.
        return {"pool_reset_on_return": None}

    def declare_write(self, connection: Connection) -> None:
        """``BEGIN IMMEDIATE`` at the first statement, a read too: the transaction waits
        (up to the busy timeout) for the write lock before it reads, instead of failing
        when its first write finds another writer holding it."""
        if _SQLITE_PENDING_BEGIN in connection.info:
            connection.info[_SQLITE_PENDING_BEGIN] = _BEGIN_FOR_WRITE

    def install(self, engine: AsyncEngine, url: URL, options: EngineOptions) -> None:
        memory = (url.database or ":memory:") == ":memory:"
        busy_ms = int(options.sqlite_busy_timeout * 1000)

        @event.listens_for(engine.sync_engine, "reset")
        def _reset_if_needed(
            dbapi_connection: Any, record: ConnectionPoolEntry, state: PoolResetState
        ) -> None:
            # Not skipped when SQLAlchemy reports the transaction reset: a COMMIT that a
            # deferred constraint refused leaves SQLite's transaction open, while SQLAlchemy
            # counts it as ended, and the connection would go back to the pool inside it
            # (the next BEGIN: "cannot start a transaction within a transaction").
            # in_transaction asks SQLite directly, with no trip through aiosqlite's thread.
            if state.terminate_only or not state.asyncio_safe:
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
            conn.info[_SQLITE_PENDING_BEGIN] = _BEGIN_FOR_READ

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
            begin_statement = conn.info.pop(_SQLITE_PENDING_BEGIN, None)
            if begin_statement is None:
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
            own.execute(_BEGIN_FOR_WRITE if writes else begin_statement)
            own.close()
            return statement, parameters

        @event.listens_for(engine.sync_engine, "commit")
        @event.listens_for(engine.sync_engine, "rollback")
        def _forget_pending_begin(conn: Connection) -> None:
            # An invalidated connection (a task cancelled mid-statement) has no info to
            # read: asking for it raises, which would turn the rollback that ends its
            # transaction into an error. Its info goes with it anyway.
            if not conn.invalidated:
                conn.info.pop(_SQLITE_PENDING_BEGIN, None)


_PROFILES: dict[str, type[DialectProfile]] = {
    "postgresql": PostgresProfile,
    "mysql": MariaDBProfile,
    "mariadb": MariaDBProfile,
    "sqlite": SQLiteProfile,
}


def profile_for(url: URL) -> DialectProfile:
    """The profile of ``url``'s backend."""
    return profile_named(url.get_backend_name())


def profile_named(backend: str) -> DialectProfile:
    """The profile of a backend by its name (``url.get_backend_name()``, ``dialect.name``)."""
    return _PROFILES.get(backend, DialectProfile)()
