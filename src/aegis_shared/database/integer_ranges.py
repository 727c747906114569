"""Which values a model's integer columns can hold, so an impossible value is never sent.

An id outside its column's range (``get_by_id(2**70)``, an id from a URL) fails in the
drivers, each its own way: ``OverflowError`` on SQLite, "value out of int32 range" on
PostgreSQL, nothing found on MariaDB. No row can hold such a value, so the repository
answers as for any id that is not there (``None``, ``EntityNotFoundError``, ``False``, no
rows), on every backend and without a query. The range of each column type on each
backend comes from the dialect seam (:meth:`DialectProfile.integer_range`).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapper

from aegis_shared.database.dialects import profile_named

Range = tuple[int, int]


def _outside(value: Any, bounds: Range | None) -> bool:
    """True when ``value`` is an int that a column with ``bounds`` cannot hold.

    Only ints are judged: other values (strings, floats) go to the database as before,
    which converts or rejects them as it always has.
    """
    return bounds is not None and isinstance(value, int) and not bounds[0] <= value <= bounds[1]


@dataclass(frozen=True)
class ColumnRanges:
    """The integer columns of one model on one dialect, by attribute name."""

    by_key: Mapping[str, Range]
    #: One entry per primary-key column, in the mapper's order (``None``: not an integer).
    primary_key: tuple[Range | None, ...]

    def impossible_id(self, id: Any) -> bool:
        """True when no row can have primary key ``id`` (a value, or a tuple of them for
        a composite key), because a part of it is outside its column's range."""
        key = self.primary_key
        if not isinstance(id, tuple):
            # The common case, a single-column key, without building a tuple: this runs
            # before every read by id.
            return len(key) == 1 and _outside(id, key[0])
        if len(id) != len(key):
            return False  # the ORM explains a malformed id better than "not found"
        return any(_outside(v, b) for v, b in zip(id, key, strict=True))


_cache: weakref.WeakKeyDictionary[Dialect, dict[Mapper[Any], ColumnRanges]] = (
    weakref.WeakKeyDictionary()
)


def ranges_for(mapper: Mapper[Any], dialect: Dialect) -> ColumnRanges:
    """The :class:`ColumnRanges` of ``mapper``'s columns on ``dialect`` (computed once)."""
    by_mapper = _cache.get(dialect)
    if by_mapper is None:
        by_mapper = _cache[dialect] = {}
    found = by_mapper.get(mapper)
    if found is None:
        found = by_mapper[mapper] = _compute(mapper, dialect)
    return found


def _compute(mapper: Mapper[Any], dialect: Dialect) -> ColumnRanges:
    profile = profile_named(dialect.name)
    by_key = {}
    for prop in mapper.column_attrs:
        bounds = profile.integer_range(prop.columns[0].type, dialect)
        if bounds is not None:
            by_key[prop.key] = bounds
    primary_key = tuple(
        by_key.get(mapper.get_property_by_column(column).key) for column in mapper.primary_key
    )
    return ColumnRanges(by_key=by_key, primary_key=primary_key)
