"""How ``filters`` become SQL: the lookup grammar, relationship paths, ``exclude`` and ``where``.

One place for "how does ``tags__name`` become SQL", shared by the ORM path and the fast path
(:mod:`aegis_shared.database.fast_path`) of :class:`~aegis_shared.database.BaseRepository`.

A filter name is a *field* and an optional *lookup*: ``title``, ``title__icontains``,
``author__username``, ``tags__name__in``. The field is a column of the model, or a path of
relationship names ending in a column of the last related model. Every relationship on a
path becomes an ``EXISTS`` subquery (``has()`` for a to-one, ``any()`` for a to-many), so a
path never multiplies rows: a list has no duplicates and a count counts each row once.

Parsing happens before any SQL: an unknown name, an unknown lookup or a value of the wrong
shape raises ``ValueError`` naming what is allowed. A parsed filter is a :class:`Term`,
which holds only the *shape* (path, column, lookup, number of values), plus its values
apart: the fast path keys its compiled statements by the terms, and binds the values.

Text matching, on SQLite, PostgreSQL and MariaDB alike:

* ``__contains``, ``__startswith``, ``__endswith`` take literal text (``%`` and ``_`` in
  it match themselves) and are case-sensitive;
* ``__icontains``, ``__istartswith``, ``__iendswith`` are the same, case-insensitive
  (``lower()`` on both sides: on SQLite that folds ASCII letters only);
* ``__like`` (case-sensitive) and ``__ilike`` take a pattern: ``%`` any text, ``_`` one
  character, ``/`` escapes the next character (``50/%`` is the text ``50%``).

Text lookups take text columns only (ValueError for others, before any SQL).
Case-sensitive matching is ``LIKE`` on PostgreSQL, ``LIKE`` under the ``utf8mb4_bin``
collation on MariaDB (whose default collations ignore case; the columns must be utf8mb4,
the library's connection character set) and ``GLOB`` on SQLite (whose ``LIKE`` ignores
ASCII case); the pattern is translated for ``GLOB`` as it is bound.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NoReturn

from sqlalchemy import Boolean, Enum, String, and_, bindparam, false, func, literal, not_
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import InstrumentedAttribute, Mapper
from sqlalchemy.sql import ColumnElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import TypeDecorator

#: Every lookup, as the suffix after ``__``.
LOOKUPS: Final = (
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "in",
    "not_in",
    "isnull",
    "like",
    "ilike",
    "contains",
    "icontains",
    "startswith",
    "istartswith",
    "endswith",
    "iendswith",
    "between",
)
_LOOKUP_SET: Final = frozenset(LOOKUPS)
#: The values a plain field (no lookup) reads as IN, as ``filters`` always did.
SEQUENCES: Final = (list, tuple, set, frozenset)
#: The escape character of every LIKE this module writes.
ESCAPE: Final = "/"
#: Lookups that compare with one value.
_COMPARISONS: Final = frozenset({"eq", "ne", "lt", "le", "gt", "ge"})
#: Lookups on text: (pattern before the value, after it, case-insensitive, value literal).
_TEXT: Final = {
    "contains": ("%", "%", False),
    "icontains": ("%", "%", True),
    "startswith": ("", "%", False),
    "istartswith": ("", "%", True),
    "endswith": ("%", "", False),
    "iendswith": ("%", "", True),
}
#: Internal ops a Term may carry besides the lookups: a case-(in)sensitive pattern match
#: and the two halves of ``isnull``.
_MATCH, _IMATCH, _NULL, _NOT_NULL = "match", "imatch", "null", "notnull"
#: Members an IN may have on the fast path; longer lists go to the ORM path, which sends
#: them as one expanding parameter instead of compiling a statement per length.
MAX_FAST_IN: Final = 32


@dataclass(frozen=True)
class Term:
    """The shape of one parsed filter; its values are kept apart (see :class:`Query`).

    ``op`` is a comparison (``eq`` ... ``ge``), ``in``, ``not_in``, ``between``, ``null``,
    ``notnull``, ``match`` (case-sensitive LIKE) or ``imatch``; ``arity`` is the number of
    values it binds; ``exclude`` marks a term of ``exclude=``.
    """

    path: tuple[str, ...]
    column: str
    op: str
    arity: int
    exclude: bool = False

    @property
    def field(self) -> str:
        """The field as a filter names it: ``author__username``."""
        return "__".join((*self.path, self.column))


@dataclass(frozen=True)
class Query:
    """Parsed ``filters``, ``exclude`` and ``where`` of one call, ready for either path."""

    terms: tuple[Term, ...] = ()
    values: tuple[tuple[Any, ...], ...] = ()
    where: tuple[ColumnElement[bool], ...] = ()

    def conditions(self, mapper: Mapper[Any]) -> list[ColumnElement[bool]]:
        """The WHERE conditions for the ORM path, with the values bound."""
        return [*clauses(mapper, self.terms, self.values), *self.where]

    def fast(self) -> tuple[tuple[Term, ...], dict[str, Any]] | None:
        """The shape and bound values for the fast path, or ``None`` when this query needs
        the ORM path (``where`` expressions, or an IN list too long to compile a plan for)."""
        if self.where:
            return None
        bound: dict[str, Any] = {}
        for index, (term, values) in enumerate(zip(self.terms, self.values, strict=True)):
            if term.arity > MAX_FAST_IN:
                return None
            for position, value in enumerate(values):
                bound[_bind_name(index, position)] = value
        return self.terms, bound


def null_term(column: str, *, null: bool) -> Term:
    """The term ``column IS NULL`` (``null=True``) or ``IS NOT NULL``, of the model itself:
    the library's own conditions (the soft-delete scope) in the grammar's shape."""
    return Term((), column, _NULL if null else _NOT_NULL, 0)


def _bind_name(index: int, position: int) -> str:
    return f"f{index}_{position}"


def shown(value: Any) -> str:
    """``value`` as an error message quotes it: a client may have sent it, so never long."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- parsing (no SQL) -------------------------------------------------------------------------


def split(name: str, mapper: Mapper[Any]) -> tuple[str, str | None]:
    """``name`` as (field, lookup or ``None``). A column whose own name ends in a lookup's
    (``created__in``?) stays a column: the model's names come first."""
    if name in mapper.column_attrs:
        return name, None
    field, sep, lookup = name.rpartition("__")
    if sep and lookup in _LOOKUP_SET:
        return field, lookup
    return name, None


def _resolve(
    mapper: Mapper[Any], field: str, lookup: str | None, purpose: str
) -> tuple[tuple[str, ...], str, Mapper[Any]]:
    """The relationship path, column key and last mapper of ``field``; ValueError naming
    what exists where it goes wrong."""
    *path, column = field.split("__")
    current = mapper
    for index, key in enumerate(path):
        relationship = current.relationships.get(key)
        if relationship is None:
            model = current.class_.__name__
            if key in current.column_attrs:
                rest = "__".join([*path[index + 1 :], column])
                raise ValueError(
                    f"{rest!r} after the column {model}.{key} is not a lookup "
                    f"(in {field!r}); lookups: {', '.join(LOOKUPS)}"
                )
            known = ", ".join(sorted(current.relationships.keys())) or "none"
            raise ValueError(
                f"{model} has no relationship {key!r} to {purpose} through; relationships: {known}"
            )
        current = relationship.mapper
    if column not in current.column_attrs:
        model = current.class_.__name__
        if column in current.relationships:
            raise ValueError(
                f"{model}.{column} is a relationship: {purpose} one of its columns, "
                f"for example {field}__id"
            )
        known = ", ".join(sorted(current.column_attrs.keys()))
        if not path and lookup is None:
            raise ValueError(f"{model} has no column {column!r} to {purpose}; known: {known}")
        raise ValueError(
            f"{model} has no column {column!r} to {purpose} (in {field!r}); known: {known}"
        )
    return tuple(path), column, current


def _escape(text: str) -> str:
    """``text`` as literal text inside a LIKE pattern with :data:`ESCAPE`."""
    return text.replace(ESCAPE, ESCAPE * 2).replace("%", ESCAPE + "%").replace("_", ESCAPE + "_")


def _check_pattern(name: str, pattern: str) -> None:
    index = 0
    while index < len(pattern):
        if pattern[index] == ESCAPE:
            if index + 1 == len(pattern):
                raise ValueError(
                    f"{name} ends with the escape character {ESCAPE!r}; write {ESCAPE * 2!r} "
                    f"for a literal {ESCAPE!r}"
                )
            index += 1
        index += 1


def _term(
    name: str, path: tuple[str, ...], column: str, lookup: str | None, value: Any
) -> tuple[str, tuple[Any, ...]]:
    """The op and values of one filter; ValueError for a value of the wrong shape."""
    if lookup is None:
        if value is None:
            return _NULL, ()
        if isinstance(value, SEQUENCES):
            return "in", tuple(value)
        return "eq", (value,)
    if lookup in _COMPARISONS:
        if isinstance(value, SEQUENCES):
            hint = "; use __in" if lookup == "eq" else "; use __not_in" if lookup == "ne" else ""
            raise ValueError(f"{name} takes one value, got {shown(value)}{hint}")
        if value is None:
            if lookup == "eq":
                return _NULL, ()
            if lookup == "ne":
                return _NOT_NULL, ()
            raise ValueError(f"{name} cannot compare with None; use __isnull=True")
        return lookup, (value,)
    if lookup in ("in", "not_in"):
        if not isinstance(value, SEQUENCES):
            raise ValueError(
                f"{name} takes a list of values, got {shown(value)}; for one value use "
                f"{'__eq' if lookup == 'in' else '__ne'}"
            )
        members = tuple(value)
        if any(member is None for member in members):
            raise ValueError(f"{name} holds None, which IN never matches; use __isnull for NULL")
        return lookup, members
    if lookup == "isnull":
        if not isinstance(value, bool):
            raise ValueError(f"{name} takes True or False, got {shown(value)}")
        return (_NULL if value else _NOT_NULL), ()
    if lookup == "between":
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ValueError(f"{name} takes a pair (low, high), both included, got {shown(value)}")
        if value[0] is None or value[1] is None:
            raise ValueError(f"{name} takes two values, not None; use __lt or __gt for one side")
        return "between", (value[0], value[1])
    if not isinstance(value, str):
        raise ValueError(f"{name} takes text, got {shown(value)}")
    if lookup in ("like", "ilike"):
        _check_pattern(name, value)
        return (_MATCH if lookup == "like" else _IMATCH), (value,)
    before, after, insensitive = _TEXT[lookup]
    if not value:
        return _NOT_NULL, ()  # '%%': every text there is
    return (_IMATCH if insensitive else _MATCH), (before + _escape(value) + after,)


def parse(
    mapper: Mapper[Any],
    filters: Mapping[str, Any] | None,
    *,
    allowed: frozenset[str] | None,
    refuse: Callable[[str], NoReturn],
    exclude: bool = False,
    purpose: str = "filter on",
) -> tuple[list[Term], list[tuple[Any, ...]]]:
    """The terms and values of ``filters``; ValueError before any SQL for what is wrong.

    With ``allowed`` (a repository's ``filterable``), a field outside it is refused through
    ``refuse`` before the model is consulted, so the message tells nothing about it.
    """
    terms: list[Term] = []
    values: list[tuple[Any, ...]] = []
    if filters is None:
        return terms, values
    argument = "exclude" if exclude else "filters"
    if not isinstance(filters, Mapping):
        raise ValueError(
            f"{argument} must be a mapping of field name to value, got {shown(filters)}"
        )
    for name, value in filters.items():
        if not isinstance(name, str):
            if allowed is not None:
                refuse(f"{purpose} {shown(name)}")
            raise ValueError(f"{argument} names fields with strings, got {shown(name)}")
        field, lookup = split(name, mapper)
        if allowed is not None and field not in allowed:
            refuse(f"{purpose} {shown(field)}")
        path, column, last = _resolve(mapper, field, lookup, purpose)
        if lookup in _TEXT_LOOKUPS and not _is_text(last.column_attrs[column].columns[0].type):
            raise ValueError(
                f"{name}: __{lookup} matches text, and {last.class_.__name__}.{column} is "
                "not a text column; compare it with __eq, __in, __lt, ..."
            )
        op, bound = _term(name, path, column, lookup, value)
        terms.append(Term(path, column, op, len(bound), exclude))
        values.append(bound)
    return terms, values


_TEXT_LOOKUPS: Final = frozenset({"like", "ilike", *_TEXT})


def _is_text(column_type: Any) -> bool:
    """True for a column type that stores text (also behind a TypeDecorator)."""
    impl = getattr(column_type, "impl_instance", column_type)
    return isinstance(impl, String) and not isinstance(impl, Enum)


def target(mapper: Mapper[Any], path: Sequence[str]) -> Mapper[Any]:
    """The mapper a relationship ``path`` from ``mapper`` ends at."""
    for key in path:
        mapper = mapper.relationships[key].mapper
    return mapper


def check_where(where: Sequence[Any] | None) -> tuple[ColumnElement[bool], ...]:
    """``where`` as a tuple of SQL expressions; ValueError for anything else (a string of
    SQL would be text from who knows where)."""
    if where is None:
        return ()
    if isinstance(where, (str, bytes)) or not isinstance(where, Sequence):
        raise ValueError(
            f"where takes a list of SQL expressions (User.age >= 18), got {shown(where)}"
        )
    checked: list[ColumnElement[bool]] = []
    for item in where:
        # A boolean column as a mapped attribute (User.active) stands for its expression.
        expression = item.__clause_element__() if hasattr(item, "__clause_element__") else item
        if not isinstance(expression, ColumnElement):
            raise ValueError(
                f"where takes SQL expressions (User.age >= 18, or_(...)), got {shown(item)}; "
                "plain values belong in filters"
            )
        checked.append(expression)
    return tuple(checked)


# -- statements ---------------------------------------------------------------------------------


class _Pattern(TypeDecorator[str]):
    """A LIKE pattern (:data:`ESCAPE` escapes), turned into a GLOB pattern on SQLite."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None or dialect.name != "sqlite":
            return value
        return like_to_glob(value)


def like_to_glob(pattern: str) -> str:
    """A LIKE pattern (``%``, ``_``, :data:`ESCAPE`) as the SQLite GLOB pattern that matches
    the same text, case-sensitively."""
    out = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == ESCAPE and index + 1 < len(pattern):
            index += 1
            char = pattern[index]
            out.append(f"[{char}]" if char in "*?[" else char)
        elif char == "%":
            out.append("*")
        elif char == "_":
            out.append("?")
        else:
            out.append(f"[{char}]" if char in "*?[" else char)
        index += 1
    return "".join(out)


class CaseSensitiveMatch(ColumnElement[bool]):
    """``column`` matches the LIKE ``pattern`` with case counted, on every backend."""

    __visit_name__ = "aegis_case_sensitive_match"
    inherit_cache = True
    _traverse_internals = [  # noqa: RUF012 (SQLAlchemy reads it as a class attribute)
        ("column", InternalTraversal.dp_clauseelement),
        ("pattern", InternalTraversal.dp_clauseelement),
    ]
    type = Boolean()

    def __init__(self, column: ColumnElement[Any], pattern: ColumnElement[Any]) -> None:
        self.column = column
        self.pattern = pattern


@compiles(CaseSensitiveMatch)
def _match_default(element: CaseSensitiveMatch, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.column, **kw)
    return f"{column} LIKE {compiler.process(element.pattern, **kw)} ESCAPE '{ESCAPE}'"


@compiles(CaseSensitiveMatch, "sqlite")
def _match_sqlite(element: CaseSensitiveMatch, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite's LIKE ignores ASCII case; GLOB counts it (the pattern is translated on bind).
    column = compiler.process(element.column, **kw)
    return f"{column} GLOB {compiler.process(element.pattern, **kw)}"


@compiles(CaseSensitiveMatch, "mysql")
@compiles(CaseSensitiveMatch, "mariadb")
def _match_mysql(element: CaseSensitiveMatch, compiler: SQLCompiler, **kw: Any) -> str:
    # The default collations ignore case; the binary collation of the same character set
    # compares characters (not bytes, so '_' is still one character).
    column = compiler.process(element.column, **kw)
    pattern = compiler.process(element.pattern, **kw)
    return f"{column} COLLATE utf8mb4_bin LIKE {pattern} ESCAPE '{ESCAPE}'"


def clauses(
    mapper: Mapper[Any],
    terms: Sequence[Term],
    values: Sequence[tuple[Any, ...]] | None = None,
) -> list[ColumnElement[bool]]:
    """The WHERE conditions of ``terms``: with ``values`` bound (the ORM path), or with
    named placeholders ``f<term>_<value>`` for a compiled plan (the fast path).

    The ``exclude`` terms become one condition, ``NOT COALESCE(a AND b, FALSE)``: a row is
    left out when it matches all of them, and kept when the match is unknown (NULL), as
    ``exclude(status="draft")`` keeps rows without a status.
    """
    included: list[ColumnElement[bool]] = []
    excluded: list[ColumnElement[bool]] = []
    for index, term in enumerate(terms):
        bound = values[index] if values is not None else None
        condition = _clause(mapper, term, index, bound)
        (excluded if term.exclude else included).append(condition)
    if excluded:
        included.append(not_(func.coalesce(and_(*excluded), false())))
    return included


def _clause(
    mapper: Mapper[Any], term: Term, index: int, bound: tuple[Any, ...] | None
) -> ColumnElement[bool]:
    steps: list[tuple[InstrumentedAttribute[Any], bool]] = []
    current = mapper
    for key in term.path:
        relationship = current.relationships[key]
        steps.append((getattr(current.class_, key), bool(relationship.uselist)))
        current = relationship.mapper
    column: InstrumentedAttribute[Any] = getattr(current.class_, term.column)
    column_type = current.column_attrs[term.column].columns[0].type

    def value(position: int, type_: Any = column_type) -> Any:
        if bound is not None:
            return literal(bound[position], type_) if type_ is not column_type else bound[position]
        return bindparam(_bind_name(index, position), type_=type_)

    op = term.op
    condition: ColumnElement[bool]
    if op == "eq":
        condition = column == value(0)
    elif op == "ne":
        condition = column != value(0)
    elif op == "lt":
        condition = column < value(0)
    elif op == "le":
        condition = column <= value(0)
    elif op == "gt":
        condition = column > value(0)
    elif op == "ge":
        condition = column >= value(0)
    elif op in ("in", "not_in"):
        members = list(bound) if bound is not None else [value(i) for i in range(term.arity)]
        condition = column.in_(members) if op == "in" else column.not_in(members)
    elif op == "between":
        condition = column.between(value(0), value(1))
    elif op == _NULL:
        condition = column.is_(None)
    elif op == _NOT_NULL:
        condition = column.is_not(None)
    elif op == _MATCH:
        condition = CaseSensitiveMatch(column.expression, value(0, _Pattern()))
    elif op == _IMATCH:
        condition = func.lower(column).like(func.lower(value(0, String())), escape=ESCAPE)
    else:  # pragma: no cover - parse() makes only the ops above
        raise AssertionError(op)
    for attribute, to_many in reversed(steps):
        # EXISTS, never a join: a to-many path cannot repeat rows.
        condition = attribute.any(condition) if to_many else attribute.has(condition)
    return condition


# -- integer ranges ---------------------------------------------------------------------------

Range = tuple[int, int]


def _outside(value: Any, bounds: Range) -> bool:
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and not (bounds[0] <= value <= bounds[1])
    )


def prune(
    terms: Sequence[Term],
    values: Sequence[tuple[Any, ...]],
    bounds_of: Callable[[Term], Range | None],
) -> tuple[list[Term], list[tuple[Any, ...]]] | None:
    """``terms`` without integers no row can hold (see :mod:`integer_ranges`), or ``None``
    when no row can match.

    Such a value never reaches a driver (each fails its own way): ``= 2**70`` and an IN
    left empty match nothing, IN members out of range are dropped, and ``!= 2**70``,
    ``< 2**70`` and the like mean only "not NULL". A term that can never be true drops
    the whole ``exclude`` group it is in (NOT of false excludes nothing).
    """
    kept_terms: list[Term] = []
    kept_values: list[tuple[Any, ...]] = []
    exclude_dead = False
    excluded = 0
    for term, bound in zip(terms, values, strict=True):
        excluded += term.exclude
        verdict = _judge(term, bound, bounds_of(term))
        if verdict is None:
            if not term.exclude:
                return None
            exclude_dead = True
        elif verdict is not _ALWAYS:
            kept_terms.append(verdict[0])
            kept_values.append(verdict[1])
    if excluded and not exclude_dead and not any(term.exclude for term in kept_terms):
        return None  # every exclude term is always true: every row is excluded
    if exclude_dead:
        pairs = [(t, v) for t, v in zip(kept_terms, kept_values, strict=True) if not t.exclude]
        kept_terms = [t for t, _ in pairs]
        kept_values = [v for _, v in pairs]
    return kept_terms, kept_values


#: :func:`_judge`'s answer for a term true for every row (``__not_in=[]``).
_ALWAYS: Final = (Term((), "", "true", 0), ())


def _judge(
    term: Term, bound: tuple[Any, ...], bounds: Range | None
) -> tuple[Term, tuple[Any, ...]] | None:
    """The term as sent (maybe rewritten), :data:`_ALWAYS` when it is true for every row,
    or ``None`` when it can never be true."""
    op = term.op
    if op in ("in", "not_in") and not bound:
        return None if op == "in" else _ALWAYS
    if bounds is None or not any(_outside(v, bounds) for v in bound):
        return term, bound
    low, high = bounds
    if op in ("in", "not_in"):
        members = tuple(v for v in bound if not _outside(v, bounds))
        if members:
            return Term(term.path, term.column, op, len(members), term.exclude), members
        return None if op == "in" else (_rewritten(term, _NOT_NULL), ())
    if op == "eq":
        return None
    if op == "ne":
        return _rewritten(term, _NOT_NULL), ()
    if op == "between":
        start, end = bound
        if (_outside(start, bounds) and start > high) or (_outside(end, bounds) and end < low):
            return None
        start = max(start, low) if isinstance(start, int) else start
        end = min(end, high) if isinstance(end, int) else end
        return term, (start, end)
    (number,) = bound
    # Every value the column holds is below an integer past its top, above one past its
    # bottom: the comparison is then true for every non-NULL value, or for none.
    below = number < low
    always = (op in ("gt", "ge")) == below
    return (_rewritten(term, _NOT_NULL), ()) if always else None


def _rewritten(term: Term, op: str) -> Term:
    return Term(term.path, term.column, op, 0, term.exclude)
