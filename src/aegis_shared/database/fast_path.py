"""The lean path for a repository's hot reads: ``get_by_id``, ``list``, ``keyset``, ``count``,
``exists``.

Why by hand: a primary-key read through the ORM spends most of its time in machinery that
is the same on every call of the same shape (the execution pipeline, result and loading
objects, and the BEGIN ... ROLLBACK of the session's transaction). Here each shape is
compiled once per dialect by SQLAlchemy's own compiler, bound and converted with the
column types' own processors, and run on a driver connection checked out of the same
SQLAlchemy pool (same limits, timeouts and connection set-up) as one autocommit
statement. The rows become ordinary persistent objects of the session, so identity,
lazy-load errors and later writes behave exactly as after an ORM read.

The fast path only runs where its answer equals the ORM's. Otherwise the caller takes the
ORM path; the conditions are in :func:`session_is_idle` and :func:`ModelReader.eligible`.
"""

from __future__ import annotations

import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import Column, Integer, Table, bindparam, event, func, select
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import MissingGreenlet
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Mapper, SessionTransaction
from sqlalchemy.orm.attributes import instance_state, set_committed_value
from sqlalchemy.pool import PoolProxiedConnection, QueuePool
from sqlalchemy.sql import ColumnElement, Select
from sqlalchemy.util.concurrency import greenlet_spawn

from aegis_shared.database import cursor_events, drivers, lookups, pagination
from aegis_shared.database.engine import driver_failure
from aegis_shared.database.replicas import require_read_after
from aegis_shared.database.session import CLOSED_KEY, HOLDS_CONNECTION_KEY, AegisSyncSession
from aegis_shared.database.write_intent import WRITE_KEY
from aegis_shared.errors.exceptions import DatabaseConnectionError, TransactionConflictError

#: ``session.info`` key holding the ``AsyncEngine`` fast reads run on; the manager sets it
#: on the sessions it makes (unless ``fast_path=False``).
FAST_PATH_ENGINE_KEY: Final = "aegis.fast_path_engine"
#: ``session.info`` key holding, for a session whose fast reads may go to a replica, an
#: async callable that chooses one: a replica's ``AsyncEngine``, or ``None`` for the
#: primary. The manager sets it on its sessions when it has replicas; a unit of work
#: removes it (:func:`pin_server`).
FAST_READ_ROUTER_KEY: Final = "aegis.fast_read_router"
_ROUTED_ENGINE: Final = "aegis.routed_engine"
_UNCHECKED_READS: Final = "aegis.unchecked_fast_reads"
_EAGER = frozenset({"joined", "selectin", "subquery", "immediate"})
_LOOSE_ISOLATION = frozenset({"READ COMMITTED", "READ UNCOMMITTED", "AUTOCOMMIT"})
_strict_isolation: weakref.WeakKeyDictionary[Engine, bool] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class _Read:
    sql: str
    params: list[Any]
    rows: list[tuple[Any, ...]]
    #: Read on a replica (the check then also covers replication lag).
    on_replica: bool = False


class Unavailable:
    """Marker: the fast path does not apply, use the ORM path."""

    def __repr__(self) -> str:
        return "UNAVAILABLE"


UNAVAILABLE: Final = Unavailable()

# -- when the session may read outside a transaction ---------------------------------------


@event.listens_for(AegisSyncSession, "after_begin")
def _transaction_began(
    session: AegisSyncSession, transaction: SessionTransaction, connection: Connection
) -> None:
    reads = session.info.pop(_UNCHECKED_READS, None)
    if reads:
        _check_reads_unchanged(connection, reads)


@event.listens_for(AegisSyncSession, "after_transaction_end")
def _transaction_ended(session: AegisSyncSession, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info.pop(_UNCHECKED_READS, None)
        # After a commit the context may have new writes to see: choose again.
        session.info.pop(_ROUTED_ENGINE, None)


def _check_reads_unchanged(connection: Connection, reads: list[_Read]) -> None:
    """Repeat the fast reads inside the transaction that just began; refuse to go on if
    any answer changed.

    Fast reads that ran on a replica are repeated the same way under any isolation
    level: so a session that read on a replica and then writes on the primary builds only
    on what the primary has, whatever the replica's lag.

    Under REPEATABLE READ or SERIALIZABLE (and on SQLite, always) a unit of work's reads
    belong to its transaction's snapshot, so a read-modify-write cannot silently build on
    a value another transaction changed meanwhile. Fast reads ran before that transaction
    existed; reading them again as its first statements puts them in its snapshot (and,
    on PostgreSQL, under its SERIALIZABLE read locks). If an answer differs, the unit of
    work read data that its transaction would not have seen: that is the same conflict
    the database reports for concurrent transactions, and retrying resolves it.
    """
    for read in reads:
        rows = connection.exec_driver_sql(read.sql, tuple(read.params)).fetchall()
        if [tuple(row) for row in rows] != read.rows:
            if any(read.on_replica for read in reads):
                # The replica may simply not have had the change yet: the retry must read
                # data at least as new as now, which sends it to the primary.
                require_read_after(time.time())
            raise TransactionConflictError(
                "Rows this unit of work read changed before it wrote, so its transaction "
                "cannot build on them. Retry the whole unit of work, for example with "
                "@with_db_retry."
            )


def session_is_idle(session: AsyncSession) -> AsyncEngine | None:
    """The engine to read on when ``session`` may read outside a transaction, else ``None``.

    That is when the session came from a manager with the fast path on, holds no
    connection (nothing read or written in its transaction yet), has no pending changes
    and no explicit ``begin()``. Once a unit of work has written, this is false until it
    commits or rolls back, so its reads go through its transaction and see its writes.
    Never for a session that declared it will write (``UnitOfWork(write=True)``): its
    reads belong inside its transaction, under the write lock it takes up front.
    """
    info = session.info
    engine = info.get(FAST_PATH_ENGINE_KEY)
    if engine is None or HOLDS_CONNECTION_KEY in info or CLOSED_KEY in info or WRITE_KEY in info:
        return None
    sync = session.sync_session
    transaction = sync.get_transaction()
    if transaction is not None and transaction.origin.name != "AUTOBEGIN":
        return None
    # _is_clean() is stricter than "no new, deleted or dirty objects" (an attribute set
    # back to its loaded value still counts) and, unlike those public properties, builds
    # no sets; a false "not clean" only sends the read down the ORM path.
    if not sync._is_clean():
        return None
    # Hooks that rewrite ORM statements (tenancy or soft-delete filters) must see every
    # read; ours (the lazy-load guard) is the one listener that may be present.
    if len(sync.dispatch.do_orm_execute) > 1:
        return None
    # Plans are compiled once without it; a schema_translate_map needs the ORM path.
    if engine.get_execution_options().get("schema_translate_map"):
        return None
    assert isinstance(engine, AsyncEngine)
    return engine


# -- compiled statements ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """One compiled statement and how to order and convert its parameters."""

    sql: str
    names: tuple[str, ...]
    processors: tuple[Callable[[Any], Any] | None, ...]
    #: Values of parameters the compiler added itself (a literal it bound).
    constants: Mapping[str, Any]

    def params(self, values: Mapping[str, Any]) -> list[Any]:
        out = []
        for name, process in zip(self.names, self.processors, strict=True):
            value = values[name] if name in values else self.constants[name]
            out.append(process(value) if process is not None and value is not None else value)
        return out


def _compile(statement: Select[Any], dialect: Dialect) -> _Plan:
    compiled = statement.compile(dialect=dialect)
    names = tuple(compiled.positiontup or ())
    processors = tuple(
        compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names
    )
    constants = {name: bind.effective_value for name, bind in compiled.binds.items()}
    return _Plan(compiled.string, names, processors, constants)


#: A filter shape: the parsed terms of ``filters`` and ``exclude`` (see :mod:`lookups`),
#: which name path, column, lookup and number of values, never the values themselves.
FilterShape = tuple[lookups.Term, ...]

#: Compiled statements one reader keeps; the least recently used goes first. Filters and
#: orderings come from requests, so their shapes are open-ended: unbounded, a client
#: sending new orderings grew the cache without end. An application's real shapes are a
#: few dozen per model, and a shape pushed out only compiles again.
MAX_PLANS: Final = 256


class ModelReader:
    """Compiled statements and row conversion for one model on one dialect."""

    def __init__(self, mapper: Mapper[Any], dialect: Dialect) -> None:
        self.mapper = mapper
        self.dialect = dialect
        #: (kind, shape) -> plan, most recently used last; at most MAX_PLANS of them.
        self.plans: OrderedDict[Any, _Plan] = OrderedDict()
        self.eligible = self._eligible(mapper)
        if not self.eligible:
            return
        table = mapper.local_table
        assert isinstance(table, Table)
        self.table = table
        self.columns: list[Column[Any]] = [prop.columns[0] for prop in mapper.column_attrs]  # type: ignore[misc]
        self.keys = [prop.key for prop in mapper.column_attrs]
        try:
            self.result_processors = [
                column.type.dialect_impl(dialect).result_processor(dialect, None)
                for column in self.columns
            ]
        except Exception:
            # Some driver types choose their converter by the column's type code, which
            # only a cursor knows (asyncpg's Numeric and Float): leave those to the ORM.
            self.eligible = False
            return
        self.converts = any(process is not None for process in self.result_processors)
        (pk,) = mapper.primary_key
        self.pk_index = next(i for i, column in enumerate(self.columns) if column is pk)
        # What identity_key_from_primary_key builds; without inheritance (see _eligible)
        # the identity class is the model itself and the identity token is None.
        self.identity_class = mapper._identity_class

    @staticmethod
    def _eligible(mapper: Mapper[Any]) -> bool:
        table = mapper.local_table
        if (
            mapper.inherits is not None
            or mapper.polymorphic_on is not None
            or mapper.with_polymorphic
            or not isinstance(table, Table)
            or len(mapper.primary_key) != 1
        ):
            return False
        for prop in mapper.column_attrs:
            column = prop.columns[0]
            if (
                prop.deferred
                or len(prop.columns) != 1
                or getattr(column, "table", None) is not table
            ):
                return False
        return all(rel.lazy not in _EAGER for rel in mapper.relationships)

    def _column(self, key: str) -> ColumnElement[Any]:
        return self.columns[self.keys.index(key)]

    def _where(self, statement: Select[Any], shape: FilterShape) -> Select[Any]:
        # The same conditions as the ORM path's (lookups.clauses), with placeholders.
        return statement.where(*lookups.clauses(self.mapper, shape)) if shape else statement

    def plan(self, kind: str, shape: Any) -> _Plan:
        """The compiled statement of ``kind`` (get, list, keyset, count, exists) for ``shape``: the
        filter terms, which include the soft-delete scope's, so the plan key does too."""
        return self.plan_of((kind, shape), lambda: self._statement(kind, shape))

    def plan_of(self, key: Any, build: Callable[[], Select[Any]]) -> _Plan:
        """The compiled statement cached under ``key``, made by ``build`` the first time:
        for statements other modules shape (a list with per-row counts, annotations.py)."""
        plans = self.plans
        found = plans.get(key)
        if found is None:
            found = plans[key] = _compile(build(), self.dialect)
            if len(plans) > MAX_PLANS:
                plans.popitem(last=False)
        else:
            plans.move_to_end(key)
        return found

    def _statement(self, kind: str, shape: Any) -> Select[Any]:
        if kind == "get":
            # shape: the terms of the soft-delete scope (see scopes.py), or None.
            statement = select(*self.columns).where(self.columns[self.pk_index] == bindparam("pk"))
            return self._where(statement, shape)
        if kind == "count":
            return self._where(select(func.count()).select_from(self.table), shape)
        if kind == "exists":
            pk = self.columns[self.pk_index]
            return self._where(select(pk), shape).limit(bindparam("limit", type_=Integer))
        if kind == "keyset":
            # shape: (filters, ordering with the tie-breaker, whether a position is given);
            # the SQL is pagination's, with placeholders k0, k1, ... for the position.
            filters, ordering, after = shape
            columns = [(self._column(key.lstrip("-")), key.startswith("-")) for key in ordering]
            statement = self._where(select(*self.columns), filters)
            if after:
                statement = statement.where(pagination.after_condition(columns))
            statement = statement.order_by(*pagination.order_clauses(columns))
            return statement.limit(bindparam("limit", type_=Integer))
        filters, ordering = shape
        statement = self._where(select(*self.columns), filters)
        for key in ordering:
            column = self._column(key.lstrip("-"))
            statement = statement.order_by(column.desc() if key.startswith("-") else column.asc())
        statement = statement.limit(bindparam("limit", type_=Integer))
        return statement.offset(bindparam("offset", type_=Integer))

    def values(self, row: Sequence[Any]) -> list[Any]:
        """The row's values as the ORM would load them."""
        return [
            process(value) if process is not None else value
            for process, value in zip(self.result_processors, row, strict=True)
        ]


_readers: weakref.WeakKeyDictionary[Dialect, dict[Mapper[Any], ModelReader]] = (
    weakref.WeakKeyDictionary()
)


def reader_for(mapper: Mapper[Any], engine: AsyncEngine) -> ModelReader | None:
    """The model's reader on ``engine``'s dialect, or ``None`` if the model needs the ORM."""
    dialect = engine.sync_engine.dialect  # AsyncEngine.dialect is a slower proxy
    by_mapper = _readers.get(dialect)
    if by_mapper is None:
        by_mapper = _readers[dialect] = {}
    reader = by_mapper.get(mapper)
    if reader is None:
        reader = by_mapper[mapper] = ModelReader(mapper, dialect)
    events = mapper.class_manager.dispatch
    # Checked on every call: listeners may be added after the first read.
    if not reader.eligible or events.load or events.refresh:
        return None
    return reader


# -- running and attaching -------------------------------------------------------------------


async def _isolation_is_strict(engine: AsyncEngine) -> bool:
    """True when the engine's connections isolate more than READ COMMITTED (asked once)."""
    strict = _strict_isolation.get(engine.sync_engine)
    if strict is None:
        async with engine.connect() as connection:
            level = str(await connection.get_isolation_level()).upper().replace("_", " ")
        strict = _strict_isolation[engine.sync_engine] = level not in _LOOSE_ISOLATION
    return strict


async def run(
    session: AsyncSession, engine: AsyncEngine, plan: _Plan, values: Mapping[str, Any]
) -> list[Any] | Unavailable:
    """Rows of ``plan`` run as one autocommit statement on a pooled driver connection, for
    a read of ``session`` (see :func:`session_is_idle`).

    Errors arrive as :mod:`aegis_shared.errors.exceptions`, as on the ORM path; an error
    this library does not map returns ``UNAVAILABLE`` so the ORM path runs the read again
    and raises exactly what it would have raised. Under an isolation level stricter than
    READ COMMITTED the read is remembered and repeated when the session's transaction
    begins (see :func:`_check_reads_unchanged`).
    """
    params = plan.params(values)
    # Looked up here so that a manager without replicas pays no extra await per read.
    router = session.info.get(FAST_READ_ROUTER_KEY)
    replica = None if router is None else await _replica_for(session, router)
    rows: list[Any] | Unavailable
    if replica is not None:
        try:
            rows = await _execute(replica, plan.sql, params)
        except DatabaseConnectionError:
            # The replica went away after the monitor's last look: the primary answers
            # (the read is not lost), and this session's later reads stay there.
            session.info[_ROUTED_ENGINE] = replica = None
            rows = await _execute(engine, plan.sql, params)
    else:
        rows = await _execute(engine, plan.sql, params)
    check = replica is not None or await _isolation_is_strict(engine)
    if check and not isinstance(rows, Unavailable):
        read = _Read(plan.sql, params, [tuple(row) for row in rows], replica is not None)
        session.info.setdefault(_UNCHECKED_READS, []).append(read)
    return rows


async def _replica_for(
    session: AsyncSession, router: Callable[[], Awaitable[AsyncEngine | None]]
) -> AsyncEngine | None:
    """The replica this idle session's fast reads go to (``router`` chooses it), or
    ``None`` for the primary.

    Chosen once per stretch outside a transaction, so that the reads of one request (a
    page, then its authors) come from one server, and again after a transaction ends.
    """
    info = session.info
    if _ROUTED_ENGINE not in info:
        info[_ROUTED_ENGINE] = await router()
    engine: AsyncEngine | None = info[_ROUTED_ENGINE]
    return engine


def pin_server(session: AsyncSession) -> None:
    """Keep every read of ``session`` on the server its session was made for from now on:
    a unit of work's first read and its last write run on the same one, and a read-only
    session that was sent to the primary does not choose again."""
    session.info.pop(FAST_READ_ROUTER_KEY, None)
    session.info.pop(_ROUTED_ENGINE, None)


async def fetch(
    engine: AsyncEngine,
    plan: _Plan,
    values: Mapping[str, Any],
    *,
    hide_parameters: bool = False,
) -> list[Any] | Unavailable:
    """Rows of ``plan`` as :func:`run` reads them, for a caller with no session and no
    transaction to follow (the session store's lookups): no objects, nothing remembered.

    ``hide_parameters=True`` keeps the values out of the echo log, as the engine's own
    ``hide_parameters`` does (the session store's digests)."""
    return await _execute(engine, plan.sql, plan.params(values), hide_parameters)


# When a check-out outside the greenlet needs I/O, SQLAlchemy closes the driver's connect
# coroutine unstarted before raising MissingGreenlet, and Python warns that it was never
# awaited. That is the expected fallback of _checkout below, not a bug to report: this
# filter matches only that message, raised from that SQLAlchemy module.
warnings.filterwarnings(
    "ignore",
    message=r"coroutine '[\w.<>]*connect' was never awaited",
    category=RuntimeWarning,
    module=r"sqlalchemy\.util\.concurrency",
)


async def _checkout(engine: AsyncEngine) -> PoolProxiedConnection:
    """A connection from ``engine``'s pool; without a greenlet when one is idle there.

    Why: ``AsyncEngine.raw_connection()`` runs the whole check-out inside
    ``greenlet_spawn`` (a tenth of a one-row read's own time) because it might need I/O: a
    new connection, a pre-ping, replacing a recycled one. Taking an idle connection without
    pre-ping is plain Python. Should it need I/O after all (its ``pool_recycle`` age has
    passed), SQLAlchemy refuses with ``MissingGreenlet`` before any I/O and puts the
    record back, and the check-out runs again the usual way.
    """
    sync_engine = engine.sync_engine
    pool = sync_engine.pool
    if not getattr(pool, "_pre_ping", True) and isinstance(pool, QueuePool) and pool.checkedin():
        try:
            return sync_engine.raw_connection()
        except MissingGreenlet:
            pass
    return await engine.raw_connection()


def _fetch_all(
    engine: AsyncEngine,
    dialect_name: str,
    connection: PoolProxiedConnection,
    sql: str,
    params: list[Any],
    hide_parameters: bool = False,
) -> Awaitable[list[Any]]:
    """The driver call of a fast read, seen by echo and the engine's cursor events.

    When nobody listens that costs a check and a call. When someone does (echo, OpenTelemetry,
    count_queries), it is still this one statement on this driver connection, announced
    around the call as SQLAlchemy announces its own (see :mod:`cursor_events`).
    """
    driver = connection.driver_connection

    def run(statement: str, parameters: Sequence[Any]) -> Awaitable[list[Any]]:
        return drivers.fetch_all(dialect_name, driver, statement, parameters)

    return cursor_events.send(
        engine.sync_engine,
        connection,
        sql,
        params,
        run,
        rowcount=len,
        stats="fast path",
        hide_parameters=hide_parameters,
    )


async def _execute(
    engine: AsyncEngine, sql: str, params: list[Any], hide_parameters: bool = False
) -> list[Any] | Unavailable:
    dialect_name = engine.sync_engine.dialect.name
    connection = await _checkout(engine)
    try:
        return await _fetch_all(engine, dialect_name, connection, sql, params, hide_parameters)
    except Exception as exc:
        translated = driver_failure(engine, exc, connection.dbapi_connection)
        if isinstance(translated, DatabaseConnectionError):
            # Broken or in an unknown state: never back into the pool. Invalidating does
            # no I/O here (the dialects terminate at once), so no greenlet is needed.
            connection.invalidate(exc)
        if translated is None:
            return UNAVAILABLE
        raise translated from exc
    except BaseException:
        # Cancelled mid-statement: the connection's protocol state is unknown, so it must
        # not go back to the pool as if it were clean. No await here: a cancelled task
        # under anyio would be cancelled again at the next one.
        connection.invalidate()
        raise
    finally:
        await _check_in(engine, dialect_name, connection)


async def _check_in(
    engine: AsyncEngine, dialect_name: str, connection: PoolProxiedConnection
) -> None:
    """Return ``connection`` to ``engine``'s pool (a no-op once it was invalidated)."""
    pool = engine.sync_engine.pool
    room = not isinstance(pool, QueuePool) or pool.checkedin() < pool.size()
    if dialect_name in ("postgresql", "sqlite") and room:
        # Check-in does no I/O here: asyncpg has no transaction to roll back, and SQLite's
        # reset rolls back only an open one (dialects.SQLiteProfile).
        connection.close()
    else:
        # A full pool closes an overflow connection instead of keeping it, and MariaDB's
        # reset always talks to the server: I/O, which needs SQLAlchemy's greenlet (without
        # it the close fails with MissingGreenlet and the connection is dropped uncleanly).
        await greenlet_spawn(connection.close)


def attach(session: AsyncSession, reader: ModelReader, rows: Sequence[Sequence[Any]]) -> list[Any]:
    """The session's objects for ``rows``: the ones it already holds, or new persistent ones.

    As on an ORM load, an object the session already holds keeps its (possibly changed)
    values; only attributes it had expired are filled in from the row.
    """
    sync = session.sync_session
    identity_map = sync.identity_map
    keys = reader.keys
    pk_index = reader.pk_index
    identity_class = reader.identity_class
    new_instance = reader.mapper.class_manager.new_instance
    hash_key = sync.hash_key
    loaded = sync.dispatch.loaded_as_persistent
    announce = bool(loaded)
    convert = reader.values if reader.converts else None
    out = []
    for row in rows:
        values = convert(row) if convert is not None else row
        key = (identity_class, (values[pk_index],), None)
        existing = identity_map.get(key)
        if existing is not None:
            expired = instance_state(existing).expired_attributes
            if expired:
                for name, value in zip(keys, values, strict=True):
                    if name in expired:
                        set_committed_value(existing, name, value)
            out.append(existing)
            continue
        # What the ORM's own loader (orm/loading.py) does for a row it has not seen: a
        # new instance whose values count as loaded and unchanged, keyed and placed
        # straight into the identity map. The public route (make_transient_to_detached +
        # session.add) costs three times as much per row, most of it in cascades that a
        # fresh row cannot have. These are SQLAlchemy internals, stable across 2.0 and
        # 2.1; the <2.2 pin and the fast-path tests guard them.
        instance = new_instance()
        state = instance_state(instance)
        state.key = key  # identity_token keeps its class default, None
        state.session_id = hash_key
        identity_map._add_unpresent(state, key)
        instance.__dict__.update(zip(keys, values, strict=True))
        if announce:
            loaded(sync, state)
        out.append(instance)
    return out


def cached_instance(session: AsyncSession, reader: ModelReader, id: Any) -> Any:
    """The object the session already holds for ``id`` with nothing expired, else ``None``."""
    existing = session.sync_session.identity_map.get((reader.identity_class, (id,), None))
    if existing is None or instance_state(existing).expired_attributes:
        return None
    return existing
