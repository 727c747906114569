"""Counts per row: the ``annotate=`` of ``list`` and ``paginate``.

``annotate={"favorites_count": "favorited_by"}`` counts, for every row returned, the links
(many-to-many) or children (one-to-many) of that relationship, as ``count_links`` does for
a set of ids, and sets the count on the object as a plain attribute:
``article.favorites_count == 3``. Each count is a correlated scalar subquery in the list's
own statement (``(SELECT count(*) FROM favorites WHERE favorites.article_id =
articles.id)``), so a page with counts is still one statement, on the fast path too.

Why an attribute rather than ``(object, counts)`` pairs: a FastAPI response model reads it
like any other field (``model_validate(article, from_attributes=True)``), and ``list()``
keeps returning the model. For type checkers, declare it on the model where SQLAlchemy
does not look::

    class Article(Base):
        ...
        if TYPE_CHECKING:
            favorites_count: int

The value is what the read that asked for it counted; a later read without ``annotate=``
leaves it as it was (the object is the session's, shared by every read of that row).

Checked before any SQL: a name must be an identifier that is not already an attribute of
the model (a column, a relationship, a method) and not start with ``_``; the relationship
must be one ``count_links`` counts (ValueError naming those otherwise).
"""

from __future__ import annotations

import keyword
from collections.abc import Mapping, Sequence
from typing import Any, Final

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Mapper
from sqlalchemy.sql import ColumnElement, Select

from aegis_shared.database import fast_path, lookups, relations

#: Most counts one call adds: each is a subquery per row.
MAX_ANNOTATIONS: Final = 8

#: A parsed ``annotate=``: (attribute name, relationship key) pairs, in the given order.
Annotations = tuple[tuple[str, str], ...]


def parse(mapper: Mapper[Any], annotate: Any) -> Annotations:
    """``annotate`` checked (see the module docstring); ValueError before any SQL."""
    if annotate is None:
        return ()
    model = mapper.class_.__name__
    if not isinstance(annotate, Mapping):
        raise ValueError(
            f"annotate takes a mapping of attribute name to relationship of {model}, for "
            f"example annotate={{'favorites_count': 'favorited_by'}}, got {lookups.shown(annotate)}"
        )
    if len(annotate) > MAX_ANNOTATIONS:
        raise ValueError(
            f"annotate takes at most {MAX_ANNOTATIONS} counts per call, got {len(annotate)}"
        )
    out = []
    for name, key in annotate.items():
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
                "that name; choose another name for the count"
            )
        relations.relation(mapper, key)  # ValueError naming the relationships it counts
        out.append((name, key))
    return tuple(out)


def columns(mapper: Mapper[Any], annotations: Annotations) -> list[ColumnElement[Any]]:
    """One correlated count per annotation, to add to a SELECT of ``mapper``'s table."""
    parent = mapper.local_table
    out: list[ColumnElement[Any]] = []
    for index, (_, key) in enumerate(annotations):
        rel = relations.relation(mapper, key)
        # An alias, so a self-referential holder (children in the parent's own table)
        # still correlates with the outer row.
        holder = rel.holder.alias(f"aegis_counted_{index}")
        local = holder.corresponding_column(rel.local)
        (parent_pk,) = mapper.primary_key
        assert local is not None
        count = (
            select(func.count())
            .select_from(holder)
            .where(local == parent_pk)
            .correlate(parent)
            .scalar_subquery()
        )
        out.append(count.label(f"aegis_count_{index}"))
    return out


def fast_plan(
    reader: fast_path.ModelReader,
    filters: fast_path.FilterShape,
    ordering: Sequence[str],
    annotations: Annotations,
) -> Any:
    """The fast path's ``list`` statement with the counts added, compiled once per shape."""
    key = ("annotated list", filters, tuple(ordering), annotations)

    def build() -> Select[Any]:
        # The list's own statement (filters, order, limit, offset), with the counts added
        # after the model's columns.
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
    """The rows of a fast-path list with their counts set, or ``None`` when the fast path
    turned out not to apply (the caller reads through the ORM)."""
    engine, reader = ready
    plan = fast_plan(reader, filters, ordering, annotations)
    rows = await fast_path.run(session, engine, plan, values)
    if isinstance(rows, fast_path.Unavailable):
        return None
    width = len(reader.columns)
    instances = fast_path.attach(session, reader, [tuple(row)[:width] for row in rows])
    apply(instances, [tuple(row)[width:] for row in rows], annotations)
    return instances


def apply(instances: Sequence[Any], counts: Sequence[Sequence[Any]], names: Annotations) -> None:
    """Set each instance's counts (``counts[i]`` in the order of ``names``) on it."""
    for instance, values in zip(instances, counts, strict=True):
        for (name, _), value in zip(names, values, strict=True):
            setattr(instance, name, int(value or 0))
