"""Pages of a listing: by page number or offset (:class:`Page`), by keyset (:class:`KeysetPage`).

The SQL-side pieces of :meth:`~aegis_shared.database.BaseRepository.paginate` and
:meth:`~aegis_shared.database.BaseRepository.keyset`, shared by the ORM path and the fast
path (:mod:`aegis_shared.database.fast_path`).

Keyset (cursor) pagination reads "the ``limit`` rows after this one in this order" with a
``WHERE`` on the ordering columns instead of an ``OFFSET``, so a page costs the same deep
in a large table as at its start, and rows inserted or deleted before the cursor between
two fetches never shift a later page: no row present from the start is skipped or
repeated. The order is the ``order_by`` columns, in any mix of directions, followed by the
primary key (ascending) as the tie-breaker, so it is total. Ordering columns must be NOT
NULL: a NULL has no place in a comparison, so a nullable column is refused with
``ValueError`` instead of giving pages that lose rows.

The ``next`` token is the last row's values of those columns, as url-safe base64 of a
small JSON document that also names the table and the ordering. It is not signed: it holds
only values of a row the client has already seen, so a forged one can only start a page
somewhere else in the same ordering, which paging from the start reaches too. It is
validated instead: a token that is not one of ours, names another table or ordering, or
holds a value of the wrong type for its column raises ``ValueError`` before any SQL.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Generic, TypeVar

from sqlalchemy import Enum, and_, bindparam, or_
from sqlalchemy.orm import Mapper
from sqlalchemy.sql import ColumnElement

from aegis_shared.database import lookups

ItemT = TypeVar("ItemT")

#: Longest token accepted: a few ordering values never need more, and a client must not
#: make the server decode megabytes.
MAX_TOKEN_LENGTH: Final = 2048
#: The token format's version, the first thing it holds.
_VERSION: Final = 1


@dataclass(frozen=True)
class Page(Generic[ItemT]):
    """One page of a listing and the total number of matching rows.

    ``offset`` is the number of rows before ``items`` (given to ``paginate(offset=...)``,
    else ``(page - 1) * page_size``); ``limit`` is ``page_size``, the most rows a page holds.
    """

    items: Sequence[ItemT]
    total: int
    page: int
    page_size: int
    offset: int | None = None

    def __post_init__(self) -> None:
        if self.offset is None:
            object.__setattr__(self, "offset", (self.page - 1) * self.page_size)

    @property
    def limit(self) -> int:
        """The most rows a page holds (``page_size``)."""
        return self.page_size

    @property
    def pages(self) -> int:
        """Number of pages for ``total`` rows (0 when there are none)."""
        return math.ceil(self.total / self.page_size) if self.page_size else 0

    @property
    def has_next(self) -> bool:
        """True when rows follow this page."""
        start = self.offset if self.offset is not None else (self.page - 1) * self.page_size
        return start + self.page_size < self.total


@dataclass(frozen=True)
class KeysetPage(Generic[ItemT]):
    """One page of a keyset listing: ``items``, the token of the page after it (``None``
    on the last page) and, when asked for with ``with_total=True``, the total number of
    matching rows (else ``None``: counting a large table costs what the page saves)."""

    items: Sequence[ItemT]
    next: str | None
    limit: int
    total: int | None = None

    @property
    def has_next(self) -> bool:
        """True when a later page has rows."""
        return self.next is not None


# -- the ordering --------------------------------------------------------------------------


def page_window(
    page: Any, page_size: Any, offset: Any, limit: Any, default_size: int
) -> tuple[int | None, int, int]:
    """``(page, offset, limit)`` from the arguments of ``paginate``: page numbers or an
    offset and a limit, never both; ValueError naming what is allowed. ``page`` is
    ``None`` in the offset form (the caller derives it once the limit is capped)."""
    by_page = page is not None or page_size is not None
    if by_page and (offset is not None or limit is not None):
        raise ValueError(
            "paginate() takes page and page_size, or offset and limit, not both: "
            "paginate(page=2, page_size=20) or paginate(offset=20, limit=20)"
        )
    if offset is not None or limit is not None:
        start = whole_number("offset", 0 if offset is None else offset, 0)
        return None, start, whole_number("limit", default_size if limit is None else limit, 1)
    number = whole_number("page", 1 if page is None else page, 1)
    size = whole_number("page_size", default_size if page_size is None else page_size, 1)
    return number, (number - 1) * size, size


def whole_number(name: str, value: Any, minimum: int) -> int:
    """``value`` if it is an int (not a bool) of at least ``minimum``; else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return value


def keyset_order(mapper: Mapper[Any], keys: Sequence[str]) -> tuple[str, ...]:
    """``keys`` (checked ``order_by`` names, ``-name`` descending) followed by the primary
    key columns they leave out, ascending: a total order. ValueError for a nullable
    column or one whose values a token cannot carry."""
    order = list(keys)
    named = {key.lstrip("-") for key in keys}
    for column in mapper.primary_key:
        key = mapper.get_property_by_column(column).key
        if key not in named:
            order.append(key)
    for item in order:
        key = item.lstrip("-")
        column = mapper.column_attrs[key].columns[0]
        if getattr(column, "nullable", True) and not getattr(column, "primary_key", False):
            raise ValueError(
                f"keyset() cannot order by {key!r}: the column is nullable, and a NULL has "
                "no place in a keyset order; order by NOT NULL columns (the primary key "
                "breaks ties), or use paginate()"
            )
        _python_type(mapper, key)
    return tuple(order)


def _python_type(mapper: Mapper[Any], key: str) -> type:
    column = mapper.column_attrs[key].columns[0]
    kind: type = object
    # A TypeDecorator (UTCDateTime) says object for its own Python type: its impl's is it.
    for column_type in (column.type, getattr(column.type, "impl_instance", None)):
        try:
            kind = column_type.python_type if column_type is not None else object
        except NotImplementedError:
            kind = object
        if kind is not object:
            break
    if isinstance(column.type, Enum) and column.type.native_enum:
        raise ValueError(
            f"keyset() cannot order by {key!r}: a native ENUM sorts by its declaration order, "
            "but MariaDB compares it with a value as text, so pages would skip rows; order "
            "by another column, or declare the Enum with native_enum=False"
        )
    if not (kind in _CODECS or issubclass(kind, enum.Enum)):
        raise ValueError(
            f"keyset() cannot order by {key!r}: a token cannot carry values of its type "
            f"{column.type}; order by integers, exact decimals, text, booleans, dates, "
            "times or UUIDs (a floating-point value need not compare equal to itself "
            "after a round trip, which would skip rows)"
        )
    return kind


def order_clauses(columns: Sequence[tuple[ColumnElement[Any], bool]]) -> list[ColumnElement[Any]]:
    """``ORDER BY`` terms for (column, descending) pairs."""
    return [column.desc() if descending else column.asc() for column, descending in columns]


def after_condition(
    columns: Sequence[tuple[ColumnElement[Any], bool]], values: Sequence[Any] | None = None
) -> ColumnElement[bool]:
    """Rows strictly after the position ``values`` in the order of ``columns`` ((column,
    descending) pairs): ``(a > :k0) OR (a = :k0 AND b < :k1) OR ...``, led by ``a >= :k0``
    so an index on the first column bounds the scan. With ``values`` the parameters are
    bound (the ORM path); without, they are placeholders ``k<i>`` for a compiled plan."""

    def value(index: int, column: ColumnElement[Any]) -> Any:
        if values is None:
            return bindparam(f"k{index}", type_=column.type)
        return bindparam(f"k{index}", values[index], type_=column.type)

    branches = []
    for index, (column, descending) in enumerate(columns):
        equal = [prior == value(i, prior) for i, (prior, _) in enumerate(columns[:index])]
        beyond = column < value(index, column) if descending else column > value(index, column)
        branches.append(and_(*equal, beyond))
    first, descending = columns[0]
    bound = first <= value(0, first) if descending else first >= value(0, first)
    return and_(bound, or_(*branches))


# -- tokens ----------------------------------------------------------------------------------


def _encode_value(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, (Decimal, uuid.UUID)):
        return str(value)
    return value


def _decode_as(kind: type, value: Any) -> Any:
    """``value`` from a token as a ``kind`` (a column's Python type); ValueError if it is
    not one."""
    if issubclass(kind, enum.Enum):
        if isinstance(value, str) and value in kind.__members__:
            return kind[value]
        raise ValueError
    return _CODECS[kind](value)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError
    return value


def _decimal(value: Any) -> Decimal:
    try:
        number = Decimal(_text(value))
    except InvalidOperation as exc:
        raise ValueError from exc
    if not number.is_finite():
        raise ValueError
    return number


def _datetime(value: Any) -> datetime:
    return datetime.fromisoformat(_text(value))


def _date(value: Any) -> date:
    text = _text(value)
    if len(text) != 10:
        raise ValueError
    return date.fromisoformat(text)


def _time(value: Any) -> time:
    return time.fromisoformat(_text(value))


def _uuid(value: Any) -> uuid.UUID:
    return uuid.UUID(_text(value))


_CODECS: Final[dict[type, Any]] = {
    int: _int,
    str: _text,
    bool: _bool,
    Decimal: _decimal,
    datetime: _datetime,
    date: _date,
    time: _time,
    uuid.UUID: _uuid,
}


def _table_name(mapper: Mapper[Any]) -> str:
    return str(getattr(mapper.local_table, "fullname", mapper.class_.__name__))


def encode(mapper: Mapper[Any], order: Sequence[str], values: Sequence[Any]) -> str:
    """The token for the position ``values`` (the last row's values of the ``order``
    columns)."""
    document = [_VERSION, _table_name(mapper), list(order), [_encode_value(v) for v in values]]
    raw = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode(mapper: Mapper[Any], order: Sequence[str], token: Any) -> list[Any]:
    """The position a token holds, as values of the ``order`` columns; ValueError before
    any SQL for anything that is not a token of this listing."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        raise ValueError(
            f"after takes the next token of a page of this listing, got {lookups.shown(token)}"
        )
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        document = json.loads(raw.decode())
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise ValueError(
            "after is not a page token (it is damaged or was not made by keyset()); "
            "start again without after"
        ) from None
    if not (
        isinstance(document, list)
        and len(document) == 4
        and document[0] == _VERSION
        and isinstance(document[3], list)
    ):
        raise ValueError(
            "after is not a page token of this version of keyset(); start again without after"
        )
    _, table, ordering, values = document
    if table != _table_name(mapper) or ordering != list(order) or len(values) != len(order):
        raise ValueError(
            f"after is a token of another listing ({lookups.shown(table)} ordered by "
            f"{lookups.shown(ordering)}); this one lists {_table_name(mapper)!r} ordered by "
            f"{list(order)!r}: pass the same order_by as for the first page"
        )
    decoded = []
    for item, value in zip(order, values, strict=True):
        key = item.lstrip("-")
        try:
            one = _decode_as(_python_type(mapper, key), value)
            if isinstance(one, datetime):
                # A column's values are aware or naive, never both; the driver would refuse
                # the other kind only once the statement is sent.
                aware = bool(getattr(mapper.column_attrs[key].columns[0].type, "timezone", False))
                if (one.tzinfo is not None) is not aware:
                    raise ValueError
            decoded.append(one)
        except (ValueError, TypeError, KeyError):
            raise ValueError(
                f"after holds {lookups.shown(value)} for {key!r}, which is not a value of "
                "that column; pass the token a page returned, unchanged"
            ) from None
    return decoded
