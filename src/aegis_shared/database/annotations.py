"""Counts and flags per row: the ``annotate=`` of ``list``, ``paginate`` and ``keyset``.

``annotate={"favorites_count": "favorited_by"}`` counts, for every row returned, the links
(many-to-many) or children (one-to-many) of that relationship, as ``count_links`` does for
a set of ids, and sets the count on the object as a plain attribute:
``article.favorites_count == 3``. ``annotate={"favorited": Linked("favorited_by", me)}``
sets ``True`` on the rows linked to the row ``me`` of the relationship's target, as
``linked()`` tells for a set of ids. A relationship may be reached through one to-one
first: ``Linked("author__followers", me)`` is "the current user follows this article's
author", ``"author__articles"`` counts the author's articles.

Each is a correlated subquery in the list's own statement (``(SELECT count(*) FROM
favorites WHERE favorites.article_id = articles.id)``, ``EXISTS (SELECT 1 FROM follows
WHERE follows.followed_id = articles.author_id AND follows.follower_id = :me)``), so a page
with counts and flags is still one statement, on the fast path too: the page of a
RealWorld article list with ``favoritesCount``, ``favorited`` and ``author.following``
needs no read per row and no read per flag.

Why an attribute rather than ``(object, counts)`` pairs: a FastAPI response model reads it
like any other field (``model_validate(article, from_attributes=True)``), and ``list()``
keeps returning the model. For type checkers, declare it on the model where SQLAlchemy
does not look::

    class Article(Base):
        ...
        if TYPE_CHECKING:
            favorites_count: int
            favorited: bool

The value is what the read that asked for it counted; a later read without ``annotate=``
leaves it as it was (the object is the session's, shared by every read of that row).

Checked before any SQL: a name must be an identifier that is not already an attribute of
the model (a column, a relationship, a method) and not start with ``_``; the relationship
must be one ``count_links`` counts, the step before it a many-to-one on the model's own
foreign key, and ``Linked``'s row one id (ValueError naming what is allowed otherwise).
An integer id no row can hold is linked to nothing, without being sent.
"""

from __future__ import annotations

import keyword
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import bindparam, exists, false, func, select
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import MANYTOONE, Mapper
from sqlalchemy.sql import ColumnElement, Select

from aegis_shared.database import fast_path, integer_ranges, lookups, relations

#: Most counts and flags one call adds: each is a subquery per row.
MAX_ANNOTATIONS: Final = 8


@dataclass(frozen=True)
class Linked:
    """``annotate={"favorited": Linked("favorited_by", me)}``: ``True`` on each row linked
    through ``relationship`` to the row ``to`` of its target (the current user's id)."""

    relationship: str
    to: Any


@dataclass(frozen=True)
class Annotation:
    """One entry of ``annotate=`` as a statement's shape (never the id it tests for)."""

    name: str
    relationship: str
    #: ``True``: a flag (``Linked``); ``False``: a count.
    linked: bool = False
    #: A flag whose id no row can hold: ``false`` without a subquery.
    impossible: bool = False


@dataclass(frozen=True)
class Annotations:
    """A parsed ``annotate=``: the shape (``items``, part of a compiled statement's key)
    and the ids the flags test for (``values``, bound as ``aegis_linked_<i>``)."""

    items: tuple[Annotation, ...] = ()
    #: One per item: the id a flag tests for; ``None`` for a count or an impossible id.
    values: tuple[Any, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.items)

    def bound(self) -> dict[str, Any]:
        """The flags' ids by bind name, for a compiled statement's parameters."""
        return {
            _bind_name(index): value
            for index, (item, value) in enumerate(zip(self.items, self.values, strict=True))
            if item.linked and not item.impossible
        }


#: No ``annotate=``.
NONE: Final = Annotations()


def _bind_name(index: int) -> str:
    return f"aegis_linked_{index}"


#: Resolved ``annotate=`` relationships per mapper (only valid keys are kept): parse()
#: runs on every list call, and the resolution walks the mapper's relationships.
_steps: weakref.WeakKeyDictionary[
    Mapper[Any], dict[str, tuple[ColumnElement[Any], relations.Relation]]
] = weakref.WeakKeyDictionary()


def _step(mapper: Mapper[Any], key: str) -> tuple[ColumnElement[Any], relations.Relation]:
    """The column of ``mapper``'s table that the relationship ``key`` correlates with (its
    primary key, or for ``to_one__relationship`` the to-one's foreign key), and the
    relationship; ValueError naming what is allowed."""
    known = _steps.get(mapper)
    if known is None:
        known = _steps[mapper] = {}
    found = known.get(key)
    if found is None:
        found = known[key] = _resolve_step(mapper, key)
    return found


def _resolve_step(mapper: Mapper[Any], key: str) -> tuple[ColumnElement[Any], relations.Relation]:
    (pk,) = mapper.primary_key
    first, _, rest = key.partition("__")
    if not rest:
        return pk, relations.relation(mapper, key)
    model = mapper.class_.__name__
    to_one = {
        rel.key: rel
        for rel in mapper.relationships
        if rel.direction is MANYTOONE
        and len(rel.local_remote_pairs or ()) == 1
        and len(rel.mapper.primary_key) == 1
        and rel.local_remote_pairs[0][1] is rel.mapper.primary_key[0]
        and rel.local_remote_pairs[0][0].table is mapper.local_table
    }
    step = to_one.get(first)
    if step is None or "__" in rest:
        allowed = ", ".join(f"{name}__<relationship>" for name in sorted(to_one)) or "none"
        raise ValueError(
            f"annotate goes through one many-to-one relationship of {model} on its own "
            f"foreign key before the relationship it counts, got {lookups.shown(key)}; "
            f"allowed: {allowed}"
        )
    local, _ = step.local_remote_pairs[0]
    return local, relations.relation(step.mapper, rest)


def parse(mapper: Mapper[Any], annotate: Any, dialect: Dialect | None = None) -> Annotations:
    """``annotate`` checked (see the module docstring); ValueError before any SQL. With
    ``dialect``, a flag's integer id outside its column's range is marked impossible."""
    if annotate is None:
        return NONE
    model = mapper.class_.__name__
    if not isinstance(annotate, Mapping):
        raise ValueError(
            f"annotate takes a mapping of attribute name to relationship of {model} (a count) "
            f"or Linked(relationship, id) (a flag), for example annotate={{'favorites_count': "
            f"'favorited_by'}}, got {lookups.shown(annotate)}"
        )
    if len(annotate) > MAX_ANNOTATIONS:
        raise ValueError(
            f"annotate takes at most {MAX_ANNOTATIONS} counts and flags per call, got "
            f"{len(annotate)}"
        )
    items, values = [], []
    for name, spec in annotate.items():
        if (
            not isinstance(name, str)
            or not name.isidentifier()
            or keyword.iskeyword(name)
            or name.startswith("_")
        ):
            raise ValueError(
                f"annotate names an attribute to set, a Python identifier not starting with "
                f"'_' (for example 'favorites_count'), got {lookups.shown(name)}"
            )
        if name in mapper.attrs or hasattr(mapper.class_, name):
            raise ValueError(
                f"annotate cannot set {model}.{name}: {model} already has an attribute of "
                "that name; choose another name"
            )
        if isinstance(spec, Linked):
            _, rel = _step(mapper, spec.relationship)
            to = relations.check_id(rel.target, f"Linked({spec.relationship!r}, ...)", spec.to)
            impossible = dialect is not None and integer_ranges.ranges_for(
                rel.target, dialect
            ).impossible_id(to)
            items.append(Annotation(name, spec.relationship, True, impossible))
            values.append(None if impossible else to)
        else:
            if not isinstance(spec, str):
                raise ValueError(
                    f"annotate[{name!r}] takes a relationship of {model} to count or "
                    f"Linked(relationship, id), got {lookups.shown(spec)}"
                )
            _step(mapper, spec)  # ValueError naming the relationships it counts
            items.append(Annotation(name, spec))
            values.append(None)
    return Annotations(tuple(items), tuple(values))


def columns(mapper: Mapper[Any], annotations: Annotations) -> list[ColumnElement[Any]]:
    """One correlated count or flag per annotation, to add to a SELECT of ``mapper``'s
    table; a flag's id is a bound parameter (``aegis_linked_<i>``), so a compiled
    statement serves every id."""
    parent = mapper.local_table
    out: list[ColumnElement[Any]] = []
    for index, item in enumerate(annotations.items):
        label = f"aegis_annotation_{index}"
        if item.impossible:
            out.append(false().label(label))
            continue
        correlated, rel = _step(mapper, item.relationship)
        # An alias, so a self-referential holder (children in the parent's own table)
        # still correlates with the outer row.
        holder = rel.holder.alias(f"aegis_counted_{index}")
        local = holder.corresponding_column(rel.local)
        assert local is not None
        if item.linked:
            remote = holder.corresponding_column(rel.remote)
            assert remote is not None
            to = bindparam(_bind_name(index), annotations.values[index], type_=rel.remote.type)
            flag = exists().where(local == correlated, remote == to).correlate(parent)
            out.append(flag.label(label))
            continue
        count = (
            select(func.count())
            .select_from(holder)
            .where(local == correlated)
            .correlate(parent)
            .scalar_subquery()
        )
        out.append(count.label(label))
    return out


def fast_plan(
    reader: fast_path.ModelReader,
    filters: fast_path.FilterShape,
    ordering: Sequence[str],
    annotations: Annotations,
) -> Any:
    """The fast path's ``list`` statement with the counts and flags added, compiled once
    per shape (the flags' ids are parameters, not part of it)."""
    key = ("annotated list", filters, tuple(ordering), annotations.items)

    def build() -> Select[Any]:
        # The list's own statement (filters, order, limit, offset), with the annotations
        # added after the model's columns.
        listed = reader._statement("list", (filters, tuple(ordering)))
        return listed.add_columns(*columns(reader.mapper, annotations))

    return reader.plan_of(key, build)


async def fast_list(
    session: AsyncSession,
    ready: tuple[AsyncEngine, fast_path.ModelReader],
    filters: fast_path.FilterShape,
    ordering: Sequence[str],
    annotations: Annotations,
    values: Mapping[str, Any],
) -> list[Any] | None:
    """The rows of a fast-path list with their counts and flags set, or ``None`` when the
    fast path turned out not to apply (the caller reads through the ORM)."""
    engine, reader = ready
    plan = fast_plan(reader, filters, ordering, annotations)
    rows = await fast_path.run(session, engine, plan, {**values, **annotations.bound()})
    if isinstance(rows, fast_path.Unavailable):
        return None
    width = len(reader.columns)
    instances = fast_path.attach(session, reader, [tuple(row)[:width] for row in rows])
    apply(instances, [tuple(row)[width:] for row in rows], annotations)
    return instances


def apply(
    instances: Sequence[Any], found: Sequence[Sequence[Any]], annotations: Annotations
) -> None:
    """Set each instance's counts and flags (``found[i]`` in the order of the
    annotations) on it: an ``int`` per count, a ``bool`` per flag."""
    items = annotations.items
    for instance, values in zip(instances, found, strict=True):
        for item, value in zip(items, values, strict=True):
            setattr(instance, item.name, bool(value) if item.linked else int(value or 0))
