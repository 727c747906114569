"""Links and counts through a model's relationships, by id, one statement each.

``BaseRepository.link``, ``unlink``, ``set_links``, ``count_links`` and ``linked`` are thin
calls into this module. Two shapes of relationship are understood:

* many-to-many through a ``secondary`` table (``Article.tags``, ``Article.favorited_by``,
  the self-referential ``User.following``): a link is one row of that table;
* one-to-many (``Article.comments``): a "link" is a child row whose foreign key names the
  parent; children are counted and tested, never created or deleted here.

Each relationship is read from the mapper once (its ``secondary`` and the
``synchronize_pairs`` / ``secondary_synchronize_pairs`` that say which column refers to
which) and must join on the primary keys, with no further conditions: a link written by
id must be a link the relationship would load. Everything is checked before any SQL.

Why by hand: through the ORM, favoriting an article loads its whole ``favorited_by``
collection, and a favourites count per article of a page loads every favouriting user of
every article (the N+1 of a Conduit article list). Here each call is one statement, and
linking is idempotent on every backend (see :func:`_skipping_insert`).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from sqlalchemy import Column, Table, bindparam, delete, func, insert, select, true
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapper, RelationshipProperty
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.orm.interfaces import MANYTOMANY, ONETOMANY
from sqlalchemy.sql.elements import ColumnElement

from aegis_shared.database import fast_path, integer_ranges

#: Most ids one call takes: every id is a bind parameter, and SQLite's oldest default
#: limit is 999 of them per statement. A page of a listing needs far fewer.
MAX_LINK_IDS: Final = 500


class LinkChanges(NamedTuple):
    """What :meth:`BaseRepository.set_links` changed: links added and links removed."""

    added: int
    removed: int


@dataclass(frozen=True)
class Relation:
    """One relationship as these calls use it.

    ``holder`` is the table whose rows are the links: the ``secondary`` table, or the
    child table of a one-to-many. ``local`` is its column naming the parent's id;
    ``remote`` its column naming the target's id (for a one-to-many, the child's own
    primary key).
    """

    key: str
    parent: Mapper[Any]
    target: Mapper[Any]
    holder: Table
    local: Column[Any]
    remote: Column[Any]
    many_to_many: bool
    #: Why ``link``/``unlink`` refuse this relationship, or ``None`` when they may write.
    unwritable: str | None
    #: The keys of the relationships on the target that load the same links the other
    #: way round (``followers`` for ``following``).
    reverse: tuple[str, ...] = ()


_relations: weakref.WeakKeyDictionary[Mapper[Any], dict[str, Relation | str]] = (
    weakref.WeakKeyDictionary()
)


def _single_pk(mapper: Mapper[Any]) -> Column[Any] | None:
    (pk, *more) = mapper.primary_key
    return None if more or not isinstance(pk, Column) else pk


def _joins_on(join: ColumnElement[bool] | None, left: Any, right: Any) -> bool:
    """True when ``join`` is exactly ``left == right`` (either way round)."""
    return join is not None and (join.compare(left == right) or join.compare(right == left))


def _resolve(mapper: Mapper[Any], rel: RelationshipProperty[Any]) -> Relation | str:
    """The :class:`Relation` for ``rel``, or why these calls cannot use it."""
    name = f"{mapper.class_.__name__}.{rel.key}"
    target = rel.mapper
    parent_pk, target_pk = _single_pk(mapper), _single_pk(target)
    if parent_pk is None or target_pk is None:
        return f"{name} joins models with a composite primary key, which links by id do not cover"
    if rel.direction is MANYTOMANY and isinstance(rel.secondary, Table):
        pairs, remote_pairs = rel.synchronize_pairs, rel.secondary_synchronize_pairs or []
        if len(pairs) != 1 or len(remote_pairs) != 1:
            return f"{name} joins on several columns; links by id need one column each side"
        (parent_col, local), (target_col, remote) = pairs[0], remote_pairs[0]
        if parent_col is not parent_pk or target_col is not target_pk:
            return f"{name} does not join on the primary keys, which links by id need"
        if not _joins_on(rel.primaryjoin, parent_col, local) or not _joins_on(
            rel.secondaryjoin, target_col, remote
        ):
            return f"{name} has join conditions beyond its keys; filter the rows yourself"
        unwritable = None
        if rel.viewonly:
            unwritable = f"{name} is viewonly"
        for column in rel.secondary.columns:
            if column is local or column is remote:
                continue
            if not (column.nullable or column.default is not None or column.server_default):
                # MariaDB's INSERT IGNORE would fill it with a made-up value.
                unwritable = f"{rel.secondary.name}.{column.name} needs a value on every link"
        assert isinstance(local, Column) and isinstance(remote, Column)
        reverse = tuple(
            other.key
            for other in target.relationships
            if other.secondary is rel.secondary and other is not rel
        )
        return Relation(
            rel.key, mapper, target, rel.secondary, local, remote, True, unwritable, reverse
        )
    if rel.direction is ONETOMANY and rel.secondary is None:
        table = target.local_table
        if len(rel.synchronize_pairs) != 1 or not isinstance(table, Table):
            return f"{name} joins on several columns; counts by id need one"
        ((parent_col, local),) = rel.synchronize_pairs
        if parent_col is not parent_pk or not _joins_on(rel.primaryjoin, parent_col, local):
            return f"{name} does not join on {mapper.class_.__name__}'s primary key alone"
        assert isinstance(local, Column)
        return Relation(
            rel.key,
            mapper,
            target,
            table,
            local,
            target_pk,
            False,
            f"{name} is one-to-many; create or delete its {target.class_.__name__} rows instead",
        )
    return f"{name} is many-to-one; read the foreign key on {mapper.class_.__name__} itself"


def relation(mapper: Mapper[Any], key: Any, *, write: bool = False) -> Relation:
    """The relationship ``key`` of ``mapper``; ValueError naming the usable ones when it
    is not one (or, with ``write``, cannot take links), before any SQL."""
    known = _relations.get(mapper)
    if known is None:
        known = _relations[mapper] = {
            rel.key: _resolve(mapper, rel) for rel in mapper.relationships
        }
    found = known.get(key) if isinstance(key, str) else None
    if isinstance(found, Relation) and not (write and found.unwritable):
        return found
    usable = sorted(
        name
        for name, item in known.items()
        if isinstance(item, Relation) and not (write and item.unwritable)
    )
    model = mapper.class_.__name__
    what = "many-to-many relationship to link through" if write else "relationship to count"
    allowed = ", ".join(usable) or "none"
    shown = repr(key) if len(repr(key)) <= 60 else repr(key)[:57] + "..."
    if isinstance(found, str):
        reason = found
    elif isinstance(found, Relation) and found.unwritable:
        reason = found.unwritable
    else:
        reason = f"{model} has no such {what}"
    raise ValueError(f"{model} cannot use {shown}: {reason}; usable: {allowed}")


def _dialect(session: AsyncSession, mapper: Mapper[Any]) -> Dialect:
    sync = session.sync_session
    bind = sync.bind if sync.bind is not None else sync.get_bind(mapper=mapper)
    return bind.dialect


def check_id(mapper: Mapper[Any], role: str, value: Any) -> Any:
    """``value`` as one id of ``mapper``'s rows; ValueError for None or a collection."""
    if value is None or isinstance(value, (list, tuple, set, frozenset, dict)):
        raise ValueError(f"{role} must be one {mapper.class_.__name__} id, got {value!r}"[:200])
    return value


def _ids(mapper: Mapper[Any], role: str, values: Any) -> list[Any]:
    """``values`` (one id or an iterable of them) as a list without repeats, checked."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        values = [values]
    out: list[Any] = []
    seen: set[Any] = set()
    for value in values:
        check_id(mapper, role, value)
        if value not in seen:
            seen.add(value)
            out.append(value)
        if len(out) > MAX_LINK_IDS:
            raise ValueError(
                f"{role} takes at most {MAX_LINK_IDS} ids per call; split them into several calls"
            )
    return out


def _possible(ranges: integer_ranges.ColumnRanges, ids: list[Any]) -> list[Any]:
    """``ids`` without those no row can have (an integer outside its column's range)."""
    return [value for value in ids if not ranges.impossible_id(value)]


def _skipping_insert(table: Table, dialect: Dialect) -> Any:
    """An INSERT that leaves out links already there, counting only the rows it adds.

    PostgreSQL and SQLite: ``ON CONFLICT DO NOTHING``. MariaDB/MySQL: ``INSERT IGNORE``:
    the ``ON DUPLICATE KEY UPDATE`` of ``bulk.py`` would report a skipped row as written
    (the driver counts found rows). What IGNORE also forgives cannot happen here: the ids
    come from a SELECT of existing rows (no foreign-key failure), the link columns are
    never NULL, and every other column has a default (checked in :func:`_resolve`).
    """
    if dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if dialect.name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    if dialect.name in ("mysql", "mariadb"):
        return insert(table).prefix_with("IGNORE")
    raise NotImplementedError(f"links by id are not available on {dialect.name}")


def _link_request(
    session: AsyncSession,
    mapper: Mapper[Any],
    key: str,
    id: Any,
    ids: Any,
    id_text: str,
    ids_text: str,
) -> tuple[Relation, Any, list[Any], Dialect] | None:
    """The relationship, parent id, target ids (those a row can have) and dialect of a
    link call, all checked before any SQL; ``None`` when no row can have the parent id."""
    rel = relation(mapper, key, write=True)
    parent_id = check_id(mapper, id_text, id)
    targets = _ids(rel.target, ids_text, ids)
    dialect = _dialect(session, mapper)
    if integer_ranges.ranges_for(mapper, dialect).impossible_id(parent_id):
        return None
    targets = _possible(integer_ranges.ranges_for(rel.target, dialect), targets)
    return rel, parent_id, targets, dialect


async def link(session: AsyncSession, mapper: Mapper[Any], key: str, id: Any, ids: Any) -> int:
    """Add the links from the row ``id`` to the rows ``ids``; returns how many were new."""
    request = _link_request(session, mapper, key, id, ids, "the id to link from", "the ids to link")
    if request is None:
        return 0
    rel, parent_id, targets, dialect = request
    if not targets:
        return 0
    statement = _link_statement(rel, dialect, parent_id, targets)
    result = await session.execute(statement)
    added = int(getattr(result, "rowcount", 0))
    if added:
        _forget(session, rel, parent_id, targets)
    return added


def _forget(
    session: AsyncSession, rel: Relation, parent_id: Any, targets: list[Any] | None
) -> None:
    """Expire the collections of these links that the session has loaded, so the next
    read loads them again rather than showing them as they were before this call.

    ``targets`` ``None``: any target may have changed (``set_links``). Expired, an
    attribute reads again with ``await obj.awaitable_attrs.<name>`` or a query's
    ``selectinload``, or raises RelationshipNotLoadedError: never a stale list.
    """
    sync = session.sync_session
    identity_map = sync.identity_map
    parent = identity_map.get(rel.parent.identity_key_from_primary_key((parent_id,)))
    if parent is not None and rel.key in instance_state(parent).dict:
        sync.expire(parent, [rel.key])
    if not rel.reverse:
        return
    if targets is None:
        loaded = [obj for obj in identity_map.values() if isinstance(obj, rel.target.class_)]
    else:
        keys = (rel.target.identity_key_from_primary_key((value,)) for value in targets)
        loaded = [obj for key in keys if (obj := identity_map.get(key)) is not None]
    for obj in loaded:
        state = instance_state(obj).dict
        stale = [key for key in rel.reverse if key in state]
        if stale:
            sync.expire(obj, stale)


def _link_statement(rel: Relation, dialect: Dialect, parent_id: Any, targets: list[Any]) -> Any:
    # INSERT ... SELECT from both tables: only rows that exist are linked (an unknown id
    # adds nothing and the count says so, the same on every backend), in one statement.
    parents = rel.parent.local_table.alias("link_parent")
    others = rel.target.local_table.alias("link_target")
    parent_pk = parents.corresponding_column(_single_pk(rel.parent))  # type: ignore[arg-type]
    target_pk = others.corresponding_column(_single_pk(rel.target))  # type: ignore[arg-type]
    assert parent_pk is not None and target_pk is not None
    source = (
        select(parent_pk, target_pk)
        .select_from(parents.join(others, true()))
        .where(parent_pk == parent_id, target_pk.in_(targets))
    )
    return _skipping_insert(rel.holder, dialect).from_select([rel.local, rel.remote], source)


async def unlink(session: AsyncSession, mapper: Mapper[Any], key: str, id: Any, ids: Any) -> int:
    """Remove the links from the row ``id`` to the rows ``ids``; returns how many went."""
    request = _link_request(
        session, mapper, key, id, ids, "the id to unlink from", "the ids to unlink"
    )
    if request is None:
        return 0
    rel, parent_id, targets, _ = request
    if not targets:
        return 0
    statement = delete(rel.holder).where(rel.local == parent_id, rel.remote.in_(targets))
    result = await session.execute(statement)
    removed = int(getattr(result, "rowcount", 0))
    if removed:
        _forget(session, rel, parent_id, targets)
    return removed


async def set_links(
    session: AsyncSession, mapper: Mapper[Any], key: str, id: Any, ids: Any
) -> LinkChanges:
    """Make the links from the row ``id`` exactly those to ``ids``: one DELETE of the
    others, then (when ``ids`` is not empty) one INSERT of the missing ones; on PostgreSQL
    both in one statement."""
    request = _link_request(
        session, mapper, key, id, ids, "the id to set links of", "the ids to link"
    )
    if request is None:
        return LinkChanges(0, 0)
    rel, parent_id, targets, dialect = request
    condition = rel.local == parent_id
    if targets:
        condition = condition & rel.remote.not_in(targets)
    if targets and dialect.name == "postgresql":
        # One statement: data-modifying CTEs. The DELETE and the INSERT touch disjoint
        # rows (links outside ``targets``, links inside), so their shared snapshot is safe.
        gone = delete(rel.holder).where(condition).returning(rel.local).cte("links_removed")
        new = (
            _link_statement(rel, dialect, parent_id, targets)
            .returning(rel.local)
            .cte("links_added")
        )
        counts = select(
            select(func.count()).select_from(new).scalar_subquery(),
            select(func.count()).select_from(gone).scalar_subquery(),
        )
        row = (await session.execute(counts)).one()
        changes = LinkChanges(int(row[0]), int(row[1]))
        if changes != (0, 0):
            _forget(session, rel, parent_id, None)
        return changes
    result = await session.execute(delete(rel.holder).where(condition))
    removed = int(getattr(result, "rowcount", 0))
    added = 0
    if targets:
        result = await session.execute(_link_statement(rel, dialect, parent_id, targets))
        added = int(getattr(result, "rowcount", 0))
    if added or removed:
        _forget(session, rel, parent_id, None)
    return LinkChanges(added, removed)


async def count_links(
    session: AsyncSession, mapper: Mapper[Any], key: str, ids: Any
) -> dict[Any, int]:
    """Links (or children) per row of ``ids``, zeros included, in one grouped count."""
    rel = relation(mapper, key)
    parents = _ids(mapper, "the ids to count for", ids)
    counts = dict.fromkeys(parents, 0)
    possible = _possible(integer_ranges.ranges_for(mapper, _dialect(session, mapper)), parents)
    if not possible:
        return counts
    found = await _fast_rows(session, rel, "count", possible, None)
    if found is None:
        statement = select(rel.local, func.count()).where(rel.local.in_(possible))
        found = list((await session.execute(statement.group_by(rel.local))).all())
    for parent_id, count in found:
        counts[parent_id] = int(count)
    return counts


async def linked(
    session: AsyncSession, mapper: Mapper[Any], key: str, ids: Any, to: Any
) -> set[Any]:
    """Those of ``ids`` linked to the target row ``to``, in one statement."""
    rel = relation(mapper, key)
    parents = _ids(mapper, "the ids to test", ids)
    other = check_id(rel.target, "the id to test for", to)
    dialect = _dialect(session, mapper)
    possible = _possible(integer_ranges.ranges_for(mapper, dialect), parents)
    if not possible or integer_ranges.ranges_for(rel.target, dialect).impossible_id(other):
        return set()
    found = await _fast_rows(session, rel, "linked", possible, other)
    if found is not None:
        return {row[0] for row in found}
    statement = select(rel.local).where(rel.local.in_(possible), rel.remote == other)
    return set((await session.scalars(statement)).all())


# -- the fast path for counts and flags ------------------------------------------------------

#: The lengths a fast-path IN list of ids is padded to (see :func:`padded`). The last is
#: the most one call takes; loading.py pads its lists the same way.
IN_SIZES: Final = (4, 8, 16, 32, 64, 128, 256, MAX_LINK_IDS)
#: Compiled statements kept per dialect, least recently used out first (as fast_path's).
_MAX_PLANS: Final = 256


@dataclass(frozen=True)
class _FastPlan:
    plan: Any  # fast_path's compiled statement
    #: Converts the parent id read back as the ORM would load it (``None``: as it comes).
    convert: Any


_plans: weakref.WeakKeyDictionary[Dialect, OrderedDict[tuple[Any, ...], _FastPlan | None]] = (
    weakref.WeakKeyDictionary()
)


def _fast_plan(rel: Relation, dialect: Dialect, kind: str, size: int) -> _FastPlan | None:
    """The compiled count or flag statement for ``size`` ids, or ``None`` when the
    parent id's type needs a cursor to convert (the ORM path handles those)."""
    plans = _plans.get(dialect)
    if plans is None:
        plans = _plans[dialect] = OrderedDict()
    key = (rel.parent, rel.key, kind, size)
    if key in plans:
        plans.move_to_end(key)
        return plans[key]
    members = [bindparam(f"id_{i}", type_=rel.local.type) for i in range(size)]
    if kind == "count":
        statement = select(rel.local, func.count()).where(rel.local.in_(members))
        statement = statement.group_by(rel.local)
    else:
        to = bindparam("to", type_=rel.remote.type)
        statement = select(rel.local).where(rel.local.in_(members), rel.remote == to)
    try:
        convert = rel.local.type.dialect_impl(dialect).result_processor(dialect, None)
        # fast_path's own compiler, so these plans bind and run exactly as its reads do.
        found: _FastPlan | None = _FastPlan(fast_path._compile(statement, dialect), convert)
    except Exception:
        found = None
    plans[key] = found
    if len(plans) > _MAX_PLANS:
        plans.popitem(last=False)
    return found


def padded(ids: list[Any]) -> list[Any]:
    """``ids`` (1 to ``MAX_LINK_IDS`` of them) lengthened to the next of ``IN_SIZES`` by
    repeating the last, which changes nothing an ``IN`` matches: a statement compiled once
    per size serves every page length, instead of one per length."""
    size = next(size for size in IN_SIZES if size >= len(ids))
    return ids + [ids[-1]] * (size - len(ids))


async def _fast_rows(
    session: AsyncSession, rel: Relation, kind: str, ids: list[Any], to: Any
) -> list[tuple[Any, ...]] | None:
    """Rows of a count or flag read on the fast path (parent id converted first), or
    ``None`` when it does not apply: the session is not idle."""
    engine = fast_path.session_is_idle(session)
    if engine is None:
        return None
    members = padded(ids)
    prepared = _fast_plan(rel, engine.sync_engine.dialect, kind, len(members))
    if prepared is None:
        return None
    values: dict[str, Any] = {f"id_{i}": value for i, value in enumerate(members)}
    values["to"] = to
    rows = await fast_path.run(session, engine, prepared.plan, values)
    if isinstance(rows, fast_path.Unavailable):
        return None
    convert = prepared.convert
    if convert is None:
        return [tuple(row) for row in rows]
    return [(convert(row[0]), *tuple(row)[1:]) for row in rows]
