"""Eager loading by relationship name: the ``load=`` of a repository's reads.

``load=["author", "tags"]`` on ``get_by_id``, ``get_one``, ``get_by``, ``get_one_by``,
``list`` and ``paginate`` loads those relationships of the rows read, so async code can
touch them without a lazy load (which it cannot do: the session raises
``RelationshipNotLoadedError``). A name may be a path of relationships
(``"author__followers"``: each article's author and each author's followers).

Every relationship is loaded "select IN" style, one statement per relationship on a path
(and per 256 parent rows), for a to-one as for a collection:

* a list of 20 articles with ``load=["author", "tags"]`` is 3 statements, however many
  rows there are, and adding a relationship adds one;
* the first statement stays the one ``list()`` sends without ``load=``, so ``limit`` and
  ``offset`` count articles, never joined rows, and the fast path keeps it;
* an author of many articles is read once, not once per article as a join repeats it;
  on the fast path a to-one whose object the session already holds (unexpired) is not
  read at all, nor is a relationship an object already has loaded (the ORM's
  ``selectinload`` reads both again and keeps the objects it has).

A join would save one round trip for a to-one and cost a wider row per parent; the
statement count the tests pin (and the docs promise) is the simpler rule above.

Names are checked before any SQL: an unknown one raises ``ValueError`` naming the
relationships that exist. On the ORM path (``options=`` given, a model the fast path
cannot read, a session in a transaction) ``load=`` becomes ``selectinload`` options, and
combines with the caller's ``options=``. On the fast path the same statements are built
here and run like :mod:`fast_path`'s reads; the objects are the session's own, with the
relationships set as loaded (``set_committed_value``), as the ORM's loader leaves them.
As on an ORM load, a relationship an object already has loaded is left as it is.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import Column, Table, bindparam, select
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Mapper, RelationshipProperty, selectinload
from sqlalchemy.orm.attributes import instance_state, set_committed_value
from sqlalchemy.orm.interfaces import MANYTOMANY, MANYTOONE, ONETOMANY, ORMOption
from sqlalchemy.orm.strategy_options import _AbstractLoad

from aegis_shared.database import fast_path, lookups, relations

#: Most names one ``load=`` takes: each is at least one statement.
MAX_LOAD: Final = 8
#: Most relationships on one path (``a__b__c``).
MAX_DEPTH: Final = 3
#: Parent ids one loading statement binds at most; more rows take one more statement
#: per this many (SQLite's oldest limit is 999 bound values per statement). The lists
#: are padded as relations.padded does, so a relationship compiles a handful of
#: statements, not one per page length.
BATCH: Final = 256
#: Compiled statements kept per dialect, least recently used out first.
_MAX_PLANS: Final = 256

Path = tuple[str, ...]


def parse(mapper: Mapper[Any], load: Any) -> tuple[Path, ...]:
    """``load`` checked: a list of relationship names or ``__`` paths, as tuples of keys
    without repeats. ValueError before any SQL, naming the relationships that exist."""
    if load is None:
        return ()
    model = mapper.class_.__name__
    if isinstance(load, (str, bytes, Mapping)) or not isinstance(load, Iterable):
        raise ValueError(
            f"load takes a list of relationship names of {model}, for example "
            f"load=['author', 'tags'], got {lookups.shown(load)}"
        )
    paths: list[Path] = []
    for name in load:
        if not isinstance(name, str):
            raise ValueError(f"load takes relationship names (str), got {lookups.shown(name)}")
        path = tuple(name.split("__"))
        if len(path) > MAX_DEPTH:
            raise ValueError(
                f"load={lookups.shown(name)} goes {len(path)} relationships deep; at most "
                f"{MAX_DEPTH} are loaded through one name"
            )
        current = mapper
        for key in path:
            rel = current.relationships.get(key) if key else None
            if rel is None:
                known = ", ".join(sorted(current.relationships.keys())) or "none"
                where = "" if len(path) == 1 else f" (in {lookups.shown(name)})"
                raise ValueError(
                    f"{current.class_.__name__} has no relationship {lookups.shown(key)} to "
                    f"load{where}; relationships: {known}"
                )
            current = rel.mapper
        if path not in paths:
            paths.append(path)
        if len(paths) > MAX_LOAD:
            raise ValueError(
                f"load names more than {MAX_LOAD} relationships; at most {MAX_LOAD} are "
                "loaded in one call"
            )
    return tuple(paths)


def options(mapper: Mapper[Any], paths: Sequence[Path]) -> list[ORMOption]:
    """``paths`` as ORM loader options: ``selectinload`` at every step."""
    out: list[ORMOption] = []
    for path in paths:
        current = mapper
        option: _AbstractLoad | None = None
        for key in path:
            attribute = getattr(current.class_, key)
            option = selectinload(attribute) if option is None else option.selectinload(attribute)
            current = current.relationships[key].mapper
        assert option is not None
        out.append(option)
    return out


def with_options(
    mapper: Mapper[Any], paths: Sequence[Path], given: Sequence[ORMOption] | None
) -> list[ORMOption] | None:
    """The caller's ``options=`` followed by those of ``paths``; ``None`` when neither."""
    combined = [*(given or ()), *options(mapper, paths)]
    return combined or None


# -- the fast path -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Step:
    """How one relationship is read on the fast path.

    ``kind``: ``"one"`` (many-to-one: the parent's foreign key names the target's primary
    key), ``"children"`` (one-to-many: the child's foreign key names the parent) or
    ``"links"`` (many-to-many through ``holder``, the secondary table).
    """

    key: str
    kind: str
    parent: Mapper[Any]
    target: Mapper[Any]
    #: many-to-one: the parent's attribute holding the foreign key; else the parent's
    #: primary-key attribute.
    parent_attr: str
    #: The column the statement filters on: the target's primary key (``one``), the
    #: child's foreign key (``children``), the secondary's parent column (``links``).
    match: Column[Any]
    holder: Table | None = None
    #: ``links``: the secondary's column naming the target.
    remote: Column[Any] | None = None


_steps: weakref.WeakKeyDictionary[Mapper[Any], dict[str, _Step | None]] = (
    weakref.WeakKeyDictionary()
)


def _single_pk_key(mapper: Mapper[Any]) -> str | None:
    if len(mapper.primary_key) != 1:
        return None
    return mapper.get_property_by_column(mapper.primary_key[0]).key


def _step_for(mapper: Mapper[Any], rel: RelationshipProperty[Any]) -> _Step | None:
    """The fast-path reading of ``rel``, or ``None`` when only the ORM reads it as
    ``selectinload`` would (ordering, extra join conditions, composite keys, ...)."""
    if (
        rel.order_by
        or rel.lazy in ("dynamic", "write_only")
        or (rel.uselist and rel.collection_class not in (None, list))
    ):
        return None
    target = rel.mapper
    if rel.direction is MANYTOONE:
        target_pk = _single_pk_key(target)
        if rel.secondary is not None or len(rel.synchronize_pairs) != 1 or target_pk is None:
            return None
        ((remote, local),) = rel.synchronize_pairs
        if remote is not target.primary_key[0] or not relations._joins_on(
            rel.primaryjoin, remote, local
        ):
            return None
        if getattr(local, "table", None) is not mapper.local_table:
            return None
        parent_attr = mapper.get_property_by_column(local).key
        assert isinstance(remote, Column)
        return _Step(rel.key, "one", mapper, target, parent_attr, remote)
    if rel.direction not in (ONETOMANY, MANYTOMANY) or not rel.uselist:
        return None
    try:
        found = relations.relation(mapper, rel.key)
    except ValueError:
        return None
    parent_pk = _single_pk_key(mapper)
    if parent_pk is None:
        return None
    if found.many_to_many:
        return _Step(
            rel.key, "links", mapper, target, parent_pk, found.local, found.holder, found.remote
        )
    return _Step(rel.key, "children", mapper, target, parent_pk, found.local)


def _step(mapper: Mapper[Any], key: str) -> _Step | None:
    known = _steps.get(mapper)
    if known is None:
        known = _steps[mapper] = {}
    if key not in known:
        known[key] = _step_for(mapper, mapper.relationships[key])
    return known[key]


def fast_plan(
    mapper: Mapper[Any], paths: Sequence[Path], engine: AsyncEngine
) -> tuple[tuple[tuple[_Step, fast_path.ModelReader], ...], ...] | None:
    """Each path's steps with the target's reader, or ``None`` when some step needs the
    ORM (then the whole read takes the ORM path, decided before any SQL)."""
    out = []
    for path in paths:
        current = mapper
        steps = []
        for key in path:
            step = _step(current, key)
            reader = fast_path.reader_for(step.target, engine) if step is not None else None
            if step is None or reader is None:
                return None
            steps.append((step, reader))
            current = step.target
        out.append(tuple(steps))
    return tuple(out)


_plans: weakref.WeakKeyDictionary[Dialect, OrderedDict[tuple[Any, ...], Any]] = (
    weakref.WeakKeyDictionary()
)


def _compiled(
    step: _Step, reader: fast_path.ModelReader, dialect: Dialect, size: int
) -> tuple[Any, Any] | None:
    """The statement reading ``step`` for ``size`` ids, as ``(plan, convert)``: the
    target's columns, for ``links`` after the parent id (``convert`` makes it what the ORM
    would load). ``None`` when the parent id's type needs a cursor to convert, as
    fast_path's readers refuse such types: then the ORM loads this relationship."""
    plans = _plans.get(dialect)
    if plans is None:
        plans = _plans[dialect] = OrderedDict()
    key = (step.parent, step.key, size)
    if key in plans:
        plans.move_to_end(key)
        found: tuple[Any, Any] | None = plans[key]
        return found
    members = [bindparam(f"id_{i}", type_=step.match.type) for i in range(size)]
    target_pk = reader.columns[reader.pk_index]
    convert = None
    found = None
    if step.kind == "links":
        assert step.holder is not None and step.remote is not None
        statement = (
            select(step.match, *reader.columns)
            .select_from(reader.table.join(step.holder, step.remote == target_pk))
            .where(step.match.in_(members))
            .order_by(step.match, target_pk)
        )
        try:
            convert = step.match.type.dialect_impl(dialect).result_processor(dialect, None)
            found = (fast_path._compile(statement, dialect), convert)
        except Exception:
            pass
    else:
        statement = select(*reader.columns).where(step.match.in_(members)).order_by(target_pk)
        found = (fast_path._compile(statement, dialect), None)
    plans[key] = found
    if len(plans) > _MAX_PLANS:
        plans.popitem(last=False)
    return found


async def _read(
    session: AsyncSession,
    engine: AsyncEngine,
    step: _Step,
    reader: fast_path.ModelReader,
    ids: list[Any],
) -> list[tuple[Any, Any]] | None:
    """``(id matched, target object)`` for every row of ``step`` for ``ids``, or ``None``
    if the fast path turned out not to apply (the caller then reads through the ORM)."""
    dialect = engine.sync_engine.dialect
    out: list[tuple[Any, Any]] = []
    for start in range(0, len(ids), BATCH):
        members = relations.padded(ids[start : start + BATCH])
        compiled = _compiled(step, reader, dialect, len(members))
        if compiled is None:
            return None
        plan, convert = compiled
        values = {f"id_{i}": value for i, value in enumerate(members)}
        rows = await fast_path.run(session, engine, plan, values)
        if isinstance(rows, fast_path.Unavailable):
            return None
        if step.kind == "links":
            objects = fast_path.attach(session, reader, [tuple(row)[1:] for row in rows])
            matched = [row[0] if convert is None else convert(row[0]) for row in rows]
        elif step.kind == "children":
            objects = fast_path.attach(session, reader, rows)
            # The parent a child belongs to: its foreign key, as the row gave it.
            index = next(i for i, c in enumerate(reader.columns) if c is step.match)
            converted = [reader.values(row) if reader.converts else row for row in rows]
            matched = [value[index] for value in converted]
        else:
            objects = fast_path.attach(session, reader, rows)
            matched = [None] * len(objects)
        out.extend(zip(matched, objects, strict=True))
    return out


async def load_fast(
    session: AsyncSession,
    engine: AsyncEngine,
    plan: tuple[tuple[tuple[_Step, fast_path.ModelReader], ...], ...],
    instances: Sequence[Any],
) -> bool:
    """Load every path of ``plan`` onto ``instances``; False when a read fell back (the
    caller then reads again through the ORM), True when done."""
    for path in plan:
        parents = list(instances)
        for step, reader in path:
            loaded = await _load_step(session, engine, step, reader, parents)
            if loaded is None:
                return False
            parents = loaded
    return True


async def _load_step(
    session: AsyncSession,
    engine: AsyncEngine,
    step: _Step,
    reader: fast_path.ModelReader,
    parents: list[Any],
) -> list[Any] | None:
    """Set ``step``'s relationship on those ``parents`` that have it unloaded; returns
    every object it now reaches (for the next step of the path), ``None`` on fallback."""
    todo: list[Any] = []
    reached: dict[int, Any] = {}
    for parent in parents:
        state = instance_state(parent)
        if step.key in state.dict:
            value = state.dict[step.key]
            for obj in value if step.kind != "one" else [value]:
                if obj is not None:
                    reached[id(obj)] = obj
        else:
            todo.append(parent)
    if not todo:
        return list(reached.values())
    ids: list[Any] = []
    seen: set[Any] = set()
    found: dict[Any, Any] = {}
    for parent in todo:
        held = instance_state(parent).dict
        if step.parent_attr not in held:
            return None  # an expired key: only the ORM can read it
        value = held[step.parent_attr]
        if value is None or value in seen:
            continue
        seen.add(value)
        if step.kind == "one":
            cached = fast_path.cached_instance(session, reader, value)
            if cached is not None:
                found[value] = cached
                continue
        ids.append(value)
    rows = await _read(session, engine, step, reader, ids) if ids else []
    if rows is None:
        return None
    if step.kind == "one":
        for _, obj in rows:
            identity = instance_state(obj).identity
            assert identity is not None
            found[identity[0]] = obj
        for parent in todo:
            target = found.get(instance_state(parent).dict.get(step.parent_attr))
            set_committed_value(parent, step.key, target)
            if target is not None:
                reached[id(target)] = target
    else:
        groups: dict[Any, list[Any]] = {}
        for matched, obj in rows:
            groups.setdefault(matched, []).append(obj)
            reached[id(obj)] = obj
        for parent in todo:
            members = groups.get(instance_state(parent).dict.get(step.parent_attr), [])
            set_committed_value(parent, step.key, list(members))
    return list(reached.values())
