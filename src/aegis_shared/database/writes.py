"""Writes in one statement: ``update_where``, ``delete_where``, ``get_or_create``, ``upsert``.

The statements behind the thin methods of :class:`~aegis_shared.database.BaseRepository`.
Filters arrive parsed (:mod:`aegis_shared.database.lookups`, the same grammar as ``list``),
values checked against the model and ``writable``; nothing here validates names again.

None of these reads a row before writing it. What that means for objects this session
already holds, which the ORM would otherwise keep showing with their old values:

* ``update_where`` sets the new values on the loaded objects it matches, worked out in
  Python from the filters (SQLAlchemy's "evaluate" synchronisation), at no cost in
  statements. Filters Python cannot evaluate (a relationship path, a SQL expression as a
  value) fall back to one SELECT, after the UPDATE, re-reading the loaded objects of the
  model, and only when some are loaded;
* ``delete_where`` removes the deleted objects from the session the same way;
* ``upsert`` re-reads the loaded objects of the model after it (one SELECT, only when
  some are loaded).

The soft-delete scope (:mod:`aegis_shared.database.scopes`) arrives in the parsed query:
``update_where`` leaves soft-deleted rows alone unless asked (as ``update`` does), while
``delete_where`` is a hard delete and matches them like any other row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from sqlalchemy import Index, Table, UniqueConstraint, delete, exc, select, tuple_, update
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapper
from sqlalchemy.orm.evaluator import UnevaluatableError

from aegis_shared.database import bulk, lookups
from aegis_shared.errors.exceptions import DuplicateEntityError

#: Bind parameters one statement may carry, by dialect (as bulk inserts count them).
_MAX_PARAMETERS: Final = {"postgresql": 32767, "sqlite": 999, "mysql": 65535, "mariadb": 65535}


def _unevaluatable(error: BaseException) -> bool:
    """True when SQLAlchemy refused the "evaluate" synchronisation, before any SQL."""
    return isinstance(error, exc.InvalidRequestError) and isinstance(
        error.__cause__, UnevaluatableError
    )


def _loaded(session: AsyncSession, mapper: Mapper[Any]) -> list[Any]:
    """The persistent objects of ``mapper``'s class this session holds."""
    return [
        state.obj()
        for state in session.sync_session.identity_map.all_states()
        if state.mapper.isa(mapper) and state.obj() is not None
    ]


async def refresh_loaded(session: AsyncSession, mapper: Mapper[Any]) -> None:
    """Re-read, in one SELECT, the loaded objects of ``mapper``'s class (none: no SQL), so
    none shows a value a statement just changed behind the ORM's back; those deleted
    meanwhile leave the session."""
    objects = _loaded(session, mapper)
    if not objects:
        return
    keys = [mapper.primary_key_from_instance(obj) for obj in objects]
    columns = mapper.primary_key
    if len(columns) == 1:
        condition = columns[0].in_([key[0] for key in keys])
    else:
        condition = tuple_(*columns).in_([tuple(key) for key in keys])
    statement = select(mapper.class_).where(condition).execution_options(populate_existing=True)
    found = {id(obj) for obj in (await session.scalars(statement)).all()}
    for obj in objects:
        if id(obj) not in found:
            session.expunge(obj)


async def update_where(
    session: AsyncSession, mapper: Mapper[Any], query: lookups.Query, values: Mapping[str, Any]
) -> int:
    """One UPDATE of the rows matching ``query``, setting ``values``; the rows matched."""
    statement = update(mapper.class_).where(*query.conditions(mapper)).values(dict(values))
    evaluate = not any(bulk.is_sql_expression(value) for value in values.values())
    return await _run_keeping_loaded_in_step(session, mapper, statement, evaluate=evaluate)


async def delete_where(session: AsyncSession, mapper: Mapper[Any], query: lookups.Query) -> int:
    """One DELETE of the rows matching ``query``; the rows deleted (0 when none were left,
    also when a concurrent transaction deleted them first)."""
    statement = delete(mapper.class_).where(*query.conditions(mapper))
    return await _run_keeping_loaded_in_step(session, mapper, statement, evaluate=True)


async def _run_keeping_loaded_in_step(
    session: AsyncSession, mapper: Mapper[Any], statement: Any, *, evaluate: bool
) -> int:
    """Run a bulk UPDATE or DELETE; the rows it matched. The session's loaded objects are
    kept in step by evaluating the criteria in Python where SQLAlchemy can, otherwise by
    re-reading them once afterwards."""
    if evaluate:
        try:
            result: Any = await session.execute(
                statement, execution_options={"synchronize_session": "evaluate"}
            )
            return int(result.rowcount)
        except exc.InvalidRequestError as error:
            if not _unevaluatable(error):
                raise
    result = await session.execute(statement, execution_options={"synchronize_session": False})
    await refresh_loaded(session, mapper)
    return int(result.rowcount)


def _table(mapper: Mapper[Any]) -> Table:
    table = mapper.local_table
    if not isinstance(table, Table) or mapper.inherits is not None:
        raise TypeError(f"{mapper.class_.__name__} is not mapped to one table of its own")
    return table


def _column_names(mapper: Mapper[Any], keys: Sequence[str]) -> list[str]:
    by_key = dict(bulk.table_columns(mapper))
    return [by_key[key].name for key in keys]


async def insert_if_absent(
    session: AsyncSession, mapper: Mapper[Any], row: Mapping[str, Any]
) -> bool:
    """INSERT ``row`` unless a unique key of it is taken (also by a concurrent
    transaction, whose outcome it waits for); True when it inserted.

    PostgreSQL and SQLite: ``ON CONFLICT DO NOTHING``, whose row count tells. MariaDB
    counts a skipped row as matched, so there a SAVEPOINT holds a plain INSERT and a
    duplicate-key error rolls back to it (never ``INSERT IGNORE``, which would also hide
    foreign-key and NOT NULL errors).
    """
    table = _table(mapper)
    values = dict(zip(_column_names(mapper, list(row)), row.values(), strict=True))
    dialect = session.get_bind(mapper=mapper).dialect
    if dialect.name in ("postgresql", "sqlite"):
        module: Any = postgresql if dialect.name == "postgresql" else sqlite
        statement = module.insert(table).values(values).on_conflict_do_nothing()
        result: Any = await session.execute(statement)
        return int(result.rowcount) == 1
    try:
        async with session.begin_nested():
            await session.execute(table.insert().values(values))
    except (DuplicateEntityError, exc.IntegrityError) as error:
        if isinstance(error, exc.IntegrityError) and not _duplicate_key(error):
            raise
        return False
    return True


def _duplicate_key(error: exc.IntegrityError) -> bool:
    """True for MariaDB's duplicate-key error (1062), not for other integrity errors."""
    code = getattr(error.orig, "args", (None,))[0]
    return code == 1062


async def select_one(
    session: AsyncSession, mapper: Mapper[Any], query: lookups.Query, *, locking: bool
) -> Any:
    """The row matching ``query`` as an object, or ``None``. ``locking``: a locking read
    (``FOR SHARE`` / ``LOCK IN SHARE MODE``), which on MariaDB sees the latest committed
    row rather than the transaction's snapshot."""
    statement = select(mapper.class_).where(*query.conditions(mapper)).limit(2)
    if locking:
        statement = statement.with_for_update(read=True)
    rows = (await session.scalars(statement)).all()
    return rows[0] if rows else None


def unique_keys(table: Table) -> list[frozenset[str]]:
    """The column-name sets of the table's primary key and unique constraints/indexes."""
    keys = [frozenset(column.name for column in table.primary_key.columns)]
    for constraint in table.constraints:
        if isinstance(constraint, UniqueConstraint):
            keys.append(frozenset(column.name for column in constraint.columns))
    for index in table.indexes:
        if isinstance(index, Index) and index.unique:
            keys.append(frozenset(column.name for column in index.columns))
    for column in table.columns:
        if column.unique:
            keys.append(frozenset({column.name}))
    return keys


async def upsert(
    session: AsyncSession,
    mapper: Mapper[Any],
    rows: Sequence[Mapping[str, Any]],
    conflict: Sequence[str],
    update_keys: Sequence[str],
) -> int:
    """Insert ``rows`` (all with the same keys), updating ``update_keys`` of those whose
    ``conflict`` key is taken; multi-row statements. Returns the rows given that were
    inserted or updated (PostgreSQL and SQLite count them; MariaDB counts an updated row
    twice, so there it is the number of rows given)."""
    table = _table(mapper)
    dialect = session.get_bind(mapper=mapper).dialect
    names = _column_names(mapper, list(rows[0]))
    conflict_names = _column_names(mapper, list(conflict))
    update_names = _column_names(mapper, list(update_keys))
    per_statement = max(1, min(1000, _MAX_PARAMETERS.get(dialect.name, 999) // len(names)))
    written = 0
    await session.flush()
    for start in range(0, len(rows), per_statement):
        batch = [
            dict(zip(names, row.values(), strict=True))
            for row in rows[start : start + per_statement]
        ]
        statement: Any
        if dialect.name in ("postgresql", "sqlite"):
            module: Any = postgresql if dialect.name == "postgresql" else sqlite
            statement = module.insert(table).values(batch)
            if update_names:
                statement = statement.on_conflict_do_update(
                    index_elements=conflict_names,
                    set_={name: statement.excluded[name] for name in update_names},
                )
            else:
                statement = statement.on_conflict_do_nothing(index_elements=conflict_names)
        elif dialect.name in ("mysql", "mariadb"):
            statement = mysql.insert(table).values(batch)
            if update_names:
                changes = {name: statement.inserted[name] for name in update_names}
            else:
                pk = next(iter(table.primary_key.columns))
                changes = {pk.name: pk}
            statement = statement.on_duplicate_key_update(changes)
        else:
            raise NotImplementedError(f"upsert() is not available on {dialect.name}")
        result: Any = await session.execute(statement)
        written += len(batch) if dialect.name in ("mysql", "mariadb") else int(result.rowcount)
    await refresh_loaded(session, mapper)
    return written
