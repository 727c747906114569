"""Bulk inserts: ``create_many(rows, returning=False)``, which returns no objects, and
the multi-row ``INSERT ... RETURNING`` of ``create_many``'s new objects.

With ``returning=False``, on PostgreSQL the rows go through ``COPY ... FROM STDIN``
(asyncpg's binary COPY) on the session's own connection, inside its transaction;
elsewhere through one multi-row INSERT per batch (SQLAlchemy's insertmanyvalues). Why by
hand: SQLAlchemy has no COPY, and the ORM's flush builds, tracks and expires an object per
row, which is most of the cost of a 100,000-row load that nobody reads back.

With objects returned (:func:`returning_batches`, :func:`insert_returning`), new rows of
a model with an auto-incremented id go out as multi-row ``INSERT ... RETURNING``, because
the ORM's flush sends one statement per row on SQLite, which cannot return the rows of a
multi-row INSERT in order; the instances come back persistent, as after a flush.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any

from sqlalchemy import Boolean, Column, Table, insert
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapper
from sqlalchemy.orm.attributes import instance_state, set_committed_value
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.sql.compiler import InsertmanyvaluesSentinelOpts
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.types import TypeEngine

from aegis_shared.database import cursor_events, drivers
from aegis_shared.database.engine import driver_failure
from aegis_shared.database.session import mark_written
from aegis_shared.errors.exceptions import DatabaseConnectionError


def table_columns(mapper: Mapper[Any]) -> list[tuple[str, Column[Any]]]:
    """(attribute key, column) of each mapped column of the model's own table."""
    table = mapper.local_table
    return [
        (prop.key, column)
        for prop in mapper.column_attrs
        for column in prop.columns[:1]
        if isinstance(column, Column) and column.table is table
    ]


def is_sql_expression(value: Any) -> bool:
    """True for a SQL expression given as a value (``func.now()``), which the database
    must evaluate rather than receive as data."""
    return isinstance(value, ClauseElement) or hasattr(value, "__clause_element__")


class _Columns:
    """What one model's bulk insert needs to know about its table, worked out once."""

    def __init__(self, mapper: Mapper[Any]) -> None:
        table = mapper.local_table
        assert isinstance(table, Table)
        self.table = table
        self.by_key: dict[str, Column[Any]] = dict(table_columns(mapper))

    def unknown(self, keys: Iterable[str]) -> list[str]:
        return sorted(set(keys) - set(self.by_key))


def _row(mapper: Mapper[Any], entity: Any) -> Mapping[str, Any] | None:
    """The column values of a mapping or a new instance; ``None`` if it needs the ORM."""
    if isinstance(entity, Mapping):
        return entity
    if not isinstance(entity, mapper.class_):
        raise TypeError(
            f"create_many() takes {mapper.class_.__name__} instances or mappings of their "
            f"fields, got {type(entity).__name__}"
        )
    state = instance_state(entity)
    if not state.transient:
        return None
    return {key: value for key, value in state.dict.items() if not key.startswith("_")}


def _default_filler(column: Column[Any]) -> Callable[[], Any] | None:
    """A function giving the column's Python-side default for one row, or ``None`` if the
    column has none (the server fills it, or it is NULL)."""
    default = column.default
    if getattr(default, "is_scalar", False):
        value = default.arg  # type: ignore[union-attr]
        return lambda: value
    if not getattr(default, "is_callable", False):
        return None
    function = default.arg  # type: ignore[union-attr]
    # SQLAlchemy wraps a no-argument default so that it takes the execution context; a
    # COPY has none, and the defaults this library ships (utcnow, uuid4) never read it.
    return lambda: function(None)


async def insert_rows(
    session: AsyncSession,
    mapper: Mapper[Any],
    entities: Iterable[Any],
    model_name: str,
    *,
    skip_duplicates: bool = False,
) -> int | None:
    """Insert ``entities`` (mappings or transient instances) and return how many rows
    were written, or ``None`` when they need the ORM's flush (relationships, events, SQL
    expressions as values).

    With ``skip_duplicates`` a row that would break a unique constraint is left out
    instead of failing the statement (see :func:`_insert_new`)."""
    columns = _Columns(mapper)
    groups: dict[frozenset[str], list[Mapping[str, Any]]] = {}
    for entity in entities:
        row = entity if type(entity) is dict else _row(mapper, entity)
        if row is None:
            return None
        keys = frozenset(row)
        group = groups.get(keys)
        if group is None:
            unknown = columns.unknown(keys)
            if unknown and all(key in mapper.relationships for key in unknown):
                return None  # related objects to insert too: the ORM's flush does that
            if unknown:
                raise ValueError(
                    f"{model_name} has no field {', '.join(map(repr, unknown))} to set; "
                    f"known: {', '.join(sorted(columns.by_key))}"
                )
            if any(is_sql_expression(value) for value in row.values()):
                return None
            group = groups[keys] = []
        group.append(row)
    if not groups:
        return 0
    # Pending ORM changes first, as any statement would (autoflush): a COPY of children
    # may refer to a parent added a moment ago.
    await session.flush()
    dialect = session.get_bind(mapper=mapper).dialect
    written = 0
    for keys, rows in groups.items():
        if skip_duplicates:
            written += await _insert_new(session, columns, rows, dialect)
        elif dialect.name == "postgresql":
            written += await _copy(session, columns, sorted(keys), rows, dialect)
        else:
            statement = insert(columns.table)
            result = await session.execute(statement, [_by_column(columns, r) for r in rows])
            written += int(getattr(result, "rowcount", len(rows)))
    return written


#: Bind parameters one statement may carry, by dialect (SQLite's is its oldest default).
_MAX_PARAMETERS = {"postgresql": 32767, "sqlite": 999, "mysql": 65535, "mariadb": 65535}


def _skipping_insert(table: Table, dialect: Dialect) -> Any:
    """An INSERT that leaves out rows whose unique key is already taken, and only those.

    PostgreSQL and SQLite: ``ON CONFLICT DO NOTHING``. MariaDB/MySQL: ``ON DUPLICATE KEY
    UPDATE`` setting the primary key to itself, a no-op; not ``INSERT IGNORE``, which
    would also turn foreign-key and NOT NULL violations into silently skipped or altered
    rows.
    """
    if dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if dialect.name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    if dialect.name in ("mysql", "mariadb"):
        pk = next(iter(table.primary_key.columns))
        return mysql.insert(table).on_duplicate_key_update({pk.name: pk})
    raise NotImplementedError(f"skip_duplicates is not available on {dialect.name}")


async def _insert_new(
    session: AsyncSession, columns: _Columns, rows: list[Mapping[str, Any]], dialect: Dialect
) -> int:
    """Insert ``rows`` (all with the same keys), skipping duplicates; returns the number
    of rows inserted (on MariaDB, which counts a skipped row as matched: the number of
    rows given)."""
    per_statement = max(
        1, min(1000, _MAX_PARAMETERS.get(dialect.name, 999) // max(1, len(rows[0])))
    )
    statement = _skipping_insert(columns.table, dialect)
    written = 0
    for start in range(0, len(rows), per_statement):
        batch = [_by_column(columns, row) for row in rows[start : start + per_statement]]
        # One multi-row VALUES statement, so the driver reports one row count for it.
        result = await session.execute(statement.values(batch))
        written += int(getattr(result, "rowcount", len(batch)))
    return written


def _by_column(columns: _Columns, row: Mapping[str, Any]) -> dict[str, Any]:
    return {columns.by_key[key].key: value for key, value in row.items()}


async def _copy(
    session: AsyncSession,
    columns: _Columns,
    present: list[str],
    rows: list[Mapping[str, Any]],
    dialect: Dialect,
) -> int:
    """COPY rows that all set the ``present`` fields; returns the rows written."""
    # Columns no row sets get their Python-side default here; the rest are left out of
    # the COPY and get their server default (an id from its sequence, now(), ...), as in
    # an INSERT that omits them.
    fillers = {
        key: filler
        for key, column in columns.by_key.items()
        if key not in present and (filler := _default_filler(column)) is not None
    }
    keys = present + list(fillers)
    processors = [_converter(columns.by_key[key].type, dialect) for key in keys]
    records = _records(rows, present, list(fillers.values()), processors)
    connection = await session.connection()
    mark_written(session)  # the COPY bypasses the session's statements
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    if not driver.is_in_transaction():
        # SQLAlchemy's asyncpg adapter sends BEGIN with the transaction's first
        # statement; COPY bypasses the adapter, so send one through it first, or the COPY
        # would commit on its own and survive a rollback.
        await connection.exec_driver_sql("SELECT 1")
    table = columns.table
    names = [columns.by_key[key].name for key in keys]
    quote = dialect.identifier_preparer
    statement = drivers.copy_statement(quote.format_table(table), [quote.quote(n) for n in names])

    def run(statement: str, parameters: Sequence[Any]) -> Awaitable[int]:
        return drivers.copy_records(driver, table.name, table.schema, names, records)

    sync = connection.sync_connection
    assert sync is not None
    try:
        # Logged and seen by cursor listeners like any statement; the rows stream as COPY
        # data, not bind parameters, so the parameters shown are none.
        return await cursor_events.send(
            sync.engine,
            sync,
            statement,
            (),
            run,
            rowcount=int,
            stats=f"copy of {len(rows)} rows",
        )
    except Exception as exc:
        translated = driver_failure(connection.engine, exc, raw.dbapi_connection)
        if isinstance(translated, DatabaseConnectionError):
            # Never back into the pool: the next unit of work would meet a dead link.
            await connection.invalidate(exc)
        if translated is None:
            raise
        raise translated from exc
    except BaseException:
        # Cancelled mid-COPY: the protocol is mid-stream, the connection unusable.
        raw.invalidate()
        raise


def _records(
    rows: list[Mapping[str, Any]],
    present: list[str],
    fillers: list[Callable[[], Any]],
    processors: Sequence[tuple[Callable[[Any], Any], type | None] | None],
) -> Iterable[tuple[Any, ...]]:
    """The rows as tuples in COPY column order, defaults filled and values converted.

    Built lazily, so asyncpg encodes and sends while later rows are still being made.
    """
    get = itemgetter(*present)
    single = len(present) == 1
    converting = [(i, *p) for i, p in enumerate(processors) if p is not None]
    for row in rows:
        values = (get(row),) if single else get(row)
        if fillers:
            values = values + tuple([fill() for fill in fillers])
        converted = None
        for index, process, ready in converting:
            value = values[index]
            if value is not None and type(value) is not ready:
                if converted is None:
                    converted = list(values)
                converted[index] = process(value)
        # Rows that need no conversion go out as they are: fewer objects, fewer GC passes.
        yield values if converted is None else tuple(converted)


def _converter(
    type_: TypeEngine[Any], dialect: Dialect
) -> tuple[Callable[[Any], Any], type | None] | None:
    """The column type's bind processor, and the value type it would return unchanged.

    Values of that exact type skip the call: with a native boolean, Boolean's processor
    only checks that a bool is a bool, and was a third of the per-row work of a COPY.
    Any other value still goes through it, to be converted or rejected as on the ORM path.
    """
    process = type_.dialect_impl(dialect).bind_processor(dialect)
    if process is None:
        return None
    plain_boolean = type(type_).bind_processor is Boolean.bind_processor  # not overridden
    ready = bool if plain_boolean and dialect.supports_native_boolean else None
    return process, ready


# -- new objects: multi-row INSERT ... RETURNING (create_many, returning=True) -----------------

#: The rows of one ``INSERT ... RETURNING``: each instance's state and its column values.
Batch = list[tuple[InstanceState[Any], dict[str, Any]]]


def returning_batches(
    session: AsyncSession, mapper: Mapper[Any], instances: list[Any]
) -> list[Batch] | None:
    """The rows for :func:`insert_returning`, grouped by the columns they set, or ``None``
    when the instances need the ORM's flush."""
    table = mapper.local_table
    flush_events = session.sync_session.dispatch
    if (
        mapper.inherits is not None
        or not isinstance(table, Table)
        or mapper.version_id_col is not None
        or mapper.dispatch.before_insert
        or mapper.dispatch.after_insert
        or flush_events.before_flush
        or flush_events.after_flush
        or table.autoincrement_column is None
        or list(table.primary_key.columns) != [table.autoincrement_column]
        or not session.get_bind(mapper=mapper).dialect.insert_executemany_returning
        or len({id(instance) for instance in instances}) != len(instances)
    ):
        return None
    columns = table_columns(mapper)
    groups: dict[tuple[str, ...], Batch] = {}
    for instance in instances:
        state = instance_state(instance)
        if not state.transient:
            return None
        for rel in mapper.relationships:
            related = state.dict.get(rel.key)
            if related is not None and (not rel.uselist or len(related)):
                return None
        row: dict[str, Any] = {}
        for key, column in columns:
            value = state.dict.get(key)
            if column.primary_key and value is not None:
                return None
            if is_sql_expression(value):
                return None
            if value is None and not (key in state.dict and column.type.should_evaluate_none):
                if not (column.primary_key or column.default or column.server_default):
                    row[column.key] = None  # an explicit NULL, as the ORM's flush sends
                continue
            row[column.key] = value
        groups.setdefault(tuple(sorted(row)), []).append((state, row))
    return list(groups.values())


async def insert_returning(
    session: AsyncSession, mapper: Mapper[Any], batch: Batch, model_name: str
) -> None:
    """INSERT ... RETURNING the rows of one group, then make their instances persistent."""
    columns = table_columns(mapper)
    table = mapper.local_table
    assert isinstance(table, Table) and table.autoincrement_column is not None
    dialect = session.get_bind(mapper=mapper).dialect
    # PostgreSQL and MariaDB return the rows in parameter order; SQLite cannot, so there
    # rows are matched by id, which it hands out in ascending order of the VALUES rows.
    ordered = bool(
        dialect.insertmanyvalues_implicit_sentinel & InsertmanyvaluesSentinelOpts.ANY_AUTOINCREMENT
    )
    statement = insert(table).returning(
        *(column for _, column in columns), sort_by_parameter_order=ordered
    )
    result = await session.execute(statement, [row for _, row in batch])
    rows = list(result.all())
    if len(rows) != len(batch):
        raise RuntimeError(f"INSERT of {len(batch)} {model_name} rows returned {len(rows)}")
    if not ordered:
        pk = next(i for i, (_, c) in enumerate(columns) if c is table.autoincrement_column)
        rows.sort(key=lambda returned: returned[pk])
    for (state, _), returned in zip(batch, rows, strict=True):
        for index, (key, _) in enumerate(columns):
            set_committed_value(state.obj(), key, returned[index])
    states = {state for state, _ in batch}
    session.add_all([state.obj() for state, _ in batch])
    # What a flush does with the rows it inserted: persistent, in the identity map, and
    # expunged again (transient) if the transaction rolls back.
    session.sync_session._register_persistent(states)
