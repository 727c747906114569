"""What every repository call stands on: construction, the allow-lists, and the checks
shared by the reads and the writes (filters, the soft-delete scope, limits, ordering).

Everything here runs before any SQL is sent: bad input is a ValueError naming what is
allowed, and a filter no row can match is known here, so the call sends nothing.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, Final, Generic, NoReturn, TypeVar

from sqlalchemy import ColumnElement, inspect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import ColumnProperty, InstrumentedAttribute, Mapper, RelationshipProperty
from sqlalchemy.orm.attributes import instance_state

from aegis_shared.database import integer_ranges, lookups, scopes
from aegis_shared.database.annotations import Linked
from aegis_shared.database.pagination import whole_number
from aegis_shared.database.scopes import Scope

ModelT = TypeVar("ModelT")

MAX_PAGE_SIZE_KEY = "aegis.max_page_size"
Filters = Mapping[str, Any]
Where = Sequence[ColumnElement[bool]]
OrderBy = str | ColumnElement[Any] | InstrumentedAttribute[Any]
#: ``load=``: relationship names (or ``__`` paths) to load with the rows.
Load = Sequence[str]
#: ``annotate=``: attribute name -> to-many relationship whose links each row counts, or
#: ``Linked(relationship, id)``: whether each row is linked to that row.
Annotate = Mapping[str, str | Linked]


#: Most terms one ``order_by`` may hold. Each distinct ordering compiles (and caches) its
#: own statement, so an unbounded one lets a client grow memory at will; no listing needs
#: more than a few tie-breakers.
MAX_ORDER_BY_TERMS: Final = 8

#: The allow-list class attributes of a repository, and what their names must be.
_ALLOWLISTS: Final = (("filterable", "column"), ("sortable", "column"), ("writable", "field"))

#: Model class -> mapper. A unit of work builds its repositories on every use, and
#: sqlalchemy.inspect() was a tenth of a one-row read's own time.
_mappers: weakref.WeakKeyDictionary[type, Mapper[Any]] = weakref.WeakKeyDictionary()
#: Repository class -> the mapper its allow-lists were checked against (seed 001's
#: construction names the model only in __init__, so the check cannot always run earlier).
_checked: weakref.WeakKeyDictionary[type, Mapper[Any]] = weakref.WeakKeyDictionary()


def _order_name(item: str) -> tuple[str, bool]:
    """The column name in an ``order_by`` string and whether it sorts descending."""
    return item.lstrip("-+"), item.startswith("-")


def _allowlist(owner: str, attribute: str, value: Any) -> frozenset[str] | None:
    """A declared allow-list as a frozenset of names; TypeError for anything else."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(
            f"{owner}.{attribute} must be a set of attribute names, for example "
            f"frozenset({{'name', 'age'}}), or None for every name; got {value!r}"
        )
    names = frozenset(value)
    bad = sorted(repr(name) for name in names if not isinstance(name, str))
    if bad:
        raise TypeError(
            f"{owner}.{attribute} must hold attribute names (str), got {', '.join(bad)}"
        )
    return names


def _check_allowlists(repository: type, mapper: Mapper[Any]) -> None:
    """TypeError unless every name a repository class allows is mapped on ``mapper``: a
    column for ``filterable`` and ``sortable``, any mapped attribute for ``writable``.

    Looks the names up without configuring the mappers, because it runs at class creation,
    when models the mappers' relationships name may not be defined yet.
    """
    for attribute, kind in _ALLOWLISTS:
        names: frozenset[str] | None = getattr(repository, attribute)
        if names is None:
            continue
        wrong = []
        for name in sorted(names):
            first = name.split("__")[0] if attribute == "filterable" else name
            prop = (
                mapper.get_property(first, _configure_mappers=False)
                if mapper.has_property(first)
                else None
            )
            if first != name:
                # A path (author__username): the related models may not be defined yet,
                # so only its first step is checked here, the rest at its first use.
                last = name.rsplit("__", 1)[-1]
                if not isinstance(prop, RelationshipProperty) or last in lookups.LOOKUPS:
                    wrong.append(repr(name))
            elif prop is None or (kind == "column" and not isinstance(prop, ColumnProperty)):
                wrong.append(repr(name))
        if wrong:
            model = mapper.class_.__name__
            raise TypeError(
                f"{repository.__name__}.{attribute} names {', '.join(wrong)}, which "
                f"{'is' if len(wrong) == 1 else 'are'} not a mapped {kind} of {model}; "
                f"allow only {kind}s of {model}, or set it to None for all of them"
            )


def declare_allowlists(repository: type[Core[Any]]) -> None:
    """Take a new repository class's allow-lists as frozensets (TypeError for anything
    else) and, when its model is known and mapped, check them against the model."""
    for attribute, _ in _ALLOWLISTS:
        if attribute in repository.__dict__:
            value = _allowlist(repository.__name__, attribute, repository.__dict__[attribute])
            setattr(repository, attribute, value)
    declared = any(getattr(repository, name) is not None for name, _ in _ALLOWLISTS)
    repository._declares_allowlists = declared
    model = getattr(repository, "model", None)
    if declared and isinstance(model, type):
        mapper: Any = inspect(model, raiseerr=False)
        if isinstance(mapper, Mapper):
            # A name that is not mapped is a typo that would refuse every request using
            # it: say so when the module is imported, not at the first request.
            _check_allowlists(repository, mapper)
            _checked[repository] = mapper


class Core(Generic[ModelT]):
    """The model a repository serves, its session, and the checks of its calls' input.

    Its subclasses (``Reads``, ``Pages``, ``Writes``, ``DirectWrites``, ``Links``) add
    the calls; :class:`~aegis_shared.database.repository.BaseRepository` joins them and
    documents the settings read here.
    """

    model: type[ModelT]
    # The settings a repository declares; their defaults and meaning are on BaseRepository.
    default_limit: ClassVar[int | None]
    max_limit: ClassVar[int | None]
    filterable: ClassVar[frozenset[str] | None]
    sortable: ClassVar[frozenset[str] | None]
    writable: ClassVar[frozenset[str] | None]
    _declares_allowlists: ClassVar[bool] = False

    def __init__(self, session: AsyncSession, model: type[ModelT] | None = None) -> None:
        if model is None:
            model = getattr(type(self), "model", None)
        if model is None:
            raise TypeError(
                f"{type(self).__name__} does not know its model: subclass "
                "BaseRepository[YourModel] or pass the model: super().__init__(session, YourModel)"
            )
        mapper = _mappers.get(model) if isinstance(model, type) else None
        if mapper is None:
            mapper = inspect(model, raiseerr=False)
            if not isinstance(mapper, Mapper):
                raise TypeError(f"{model!r} is not a mapped SQLAlchemy model class")
            _mappers[model] = mapper
        cls = type(self)
        if cls._declares_allowlists and _checked.get(cls) is not mapper:
            _check_allowlists(cls, mapper)
            _checked[cls] = mapper
        self.session = session
        self.model = model
        self._mapper: Mapper[Any] = mapper

    # -- validation (before any SQL is sent) ------------------------------------------------

    @property
    def _name(self) -> str:
        return self.model.__name__

    def _check_column(self, name: Any, purpose: str, allowed: frozenset[str] | None = None) -> str:
        if allowed is not None:
            if not isinstance(name, str) or name not in allowed:
                self._refuse(f"{purpose} {lookups.shown(name)}", allowed)
            return name
        if not isinstance(name, str) or name not in self._mapper.column_attrs:
            known = ", ".join(sorted(self._mapper.column_attrs.keys()))
            raise ValueError(f"{self._name} has no column {name!r} to {purpose}; known: {known}")
        return name

    def _refuse(self, what: str, allowed: frozenset[str]) -> NoReturn:
        """ValueError: ``what`` is not among the ``allowed`` names.

        The same words whether the name is a column or not, so the message tells a client
        nothing about the columns it may not use.
        """
        names = ", ".join(sorted(allowed)) or "none"
        raise ValueError(f"{type(self).__name__} does not allow {what}; allowed: {names}")

    def _check_writable(self, names: Iterable[Any]) -> None:
        """ValueError when ``writable`` is declared and leaves out one of ``names``."""
        allowed = self.writable
        if allowed is None:
            return
        refused = sorted({lookups.shown(name) for name in names if name not in allowed})
        if refused:
            fields = "field" if len(refused) == 1 else "fields"
            self._refuse(f"setting the {fields} {', '.join(refused)}", allowed)

    def _column(self, name: str, purpose: str) -> InstrumentedAttribute[Any]:
        attribute: InstrumentedAttribute[Any] = getattr(
            self.model, self._check_column(name, purpose)
        )
        return attribute

    def _refuse_filter(self, what: str) -> NoReturn:
        self._refuse(what, self.filterable or frozenset())

    def _dialect(self) -> Any:
        sync = self.session.sync_session
        bind = sync.bind if sync.bind is not None else sync.get_bind(mapper=self._mapper)
        return bind.dialect

    def _primary_key_names(self) -> list[str]:
        """The attribute names of the primary key's columns, in the key's order."""
        return [self._mapper.get_property_by_column(c).key for c in self._mapper.primary_key]

    def _keep_primary_key(self, names: Iterable[str], call: str) -> None:
        """ValueError when ``names`` include a primary key column: ``call`` cannot change it."""
        changed = sorted(set(self._primary_key_names()) & set(names))
        if changed:
            raise ValueError(f"{call}() cannot change the primary key {', '.join(changed)}")

    def _ranges(self) -> integer_ranges.ColumnRanges:
        return integer_ranges.ranges_for(self._mapper, self._dialect())

    def _query(
        self,
        filters: Filters | None,
        exclude: Filters | None = None,
        where: Where | None = None,
        extra: tuple[list[lookups.Term], list[tuple[Any, ...]]] | None = None,
        scope: Scope = Scope.ALL,
    ) -> lookups.Query | None:
        """``filters``, ``exclude`` and ``where`` checked and parsed (ValueError before any
        SQL; see :mod:`lookups`), or ``None`` when no row can match them (an integer out
        of its column's range: see integer_ranges). ``extra``: terms of the library's own
        (an id), which the allow-list does not govern; ``scope``: the soft-delete scope's
        term, added last (see :mod:`scopes`)."""
        terms, values = lookups.parse(
            self._mapper, filters, allowed=self.filterable, refuse=self._refuse_filter
        )
        if exclude is not None:
            excluded, excluded_values = lookups.parse(
                self._mapper,
                exclude,
                allowed=self.filterable,
                refuse=self._refuse_filter,
                exclude=True,
            )
            terms += excluded
            values += excluded_values
        checked_where = lookups.check_where(where)
        if extra is not None:
            terms = extra[0] + terms
            values = extra[1] + values
        scoped = scopes.terms(self._mapper, scope)
        if not terms:
            return lookups.Query(scoped, ((),) * len(scoped), checked_where)
        dialect = self._dialect()

        def bounds(term: lookups.Term) -> integer_ranges.Range | None:
            mapper = lookups.target(self._mapper, term.path)
            return integer_ranges.ranges_for(mapper, dialect).by_key.get(term.column)

        pruned = lookups.prune(terms, values, bounds)
        if pruned is None:
            return None
        kept, kept_values = pruned
        for term in scoped:
            if term not in kept:  # seed 001's filters={"deleted_at": None} says it already
                kept.append(term)
                kept_values.append(())
        return lookups.Query(tuple(kept), tuple(kept_values), checked_where)

    def _scope(self, with_deleted: Any, only_deleted: Any) -> Scope:
        """The soft-delete scope of a call (ValueError before any SQL; see :mod:`scopes`)."""
        if with_deleted is False and only_deleted is False:
            return Scope.LIVE
        return scopes.choose(self._mapper, with_deleted, only_deleted)

    def _visible(self, instance: Any, scope: Scope) -> bool:
        """True when ``instance``, loaded with ``deleted_at``, is visible in ``scope``."""
        if scope is Scope.ALL or not scopes.soft_deletable(self._mapper):
            return True
        return scopes.admits(scope, instance_state(instance).dict.get(scopes.COLUMN))

    async def _deleted_value(self, instance: Any) -> Any:
        """``instance.deleted_at``, read again (one SELECT) only if it was expired: async
        code cannot load it lazily."""
        if scopes.COLUMN not in instance_state(instance).dict:
            await self.session.refresh(instance, [scopes.COLUMN])
        return instance_state(instance).dict.get(scopes.COLUMN)

    async def _admitted(self, instance: ModelT | None, scope: Scope) -> ModelT | None:
        """``instance`` if it is visible in ``scope``, else ``None``; an object the session
        holds is judged by its own ``deleted_at`` (what the session would flush)."""
        if instance is None or scope is Scope.ALL or not scopes.soft_deletable(self._mapper):
            return instance
        visible = scopes.admits(scope, await self._deleted_value(instance))
        return instance if visible else None

    def _limit(self, limit: int | None) -> int:
        cap = self.max_limit or int(self.session.info.get(MAX_PAGE_SIZE_KEY, 1000))
        if limit is None:
            return cap if self.default_limit is None else self.default_limit
        whole_number("limit", limit, 0)
        if limit > cap:
            raise ValueError(
                f"limit {limit} is above the maximum of {cap} rows per call; page through "
                "the rows with skip, or raise max_limit / DATABASE_MAX_PAGE_SIZE"
            )
        return limit

    @staticmethod
    def _skip(skip: int) -> int:
        return whole_number("skip", skip, 0)

    @staticmethod
    def _order_items(order_by: OrderBy | Sequence[OrderBy] | None) -> list[OrderBy]:
        if order_by is None:
            return []
        if isinstance(order_by, (str, ColumnElement, InstrumentedAttribute)):
            return [order_by]
        items = list(order_by)
        if len(items) > MAX_ORDER_BY_TERMS:
            raise ValueError(
                f"order_by takes at most {MAX_ORDER_BY_TERMS} columns, got {len(items)}; "
                "sort on fewer columns"
            )
        return items

    def _order_keys(self, order_by: OrderBy | Sequence[OrderBy] | None) -> tuple[str, ...] | None:
        """``order_by`` checked, as names (``-name`` descending; the primary key when
        empty), or ``None`` when it holds column objects, which only the ORM compiles."""
        keys: list[str] | None = []
        seen: set[str] = set()
        for item in self._order_items(order_by):
            if isinstance(item, str):
                name, descending = _order_name(item)
                self._check_column(name, "order by", self.sortable)
                if name in seen:
                    # A second term on a column never changes the order; refusing it also
                    # keeps clients from minting endless distinct orderings.
                    raise ValueError(f"order_by names the column {name!r} twice; name it once")
                seen.add(name)
                if keys is not None:
                    keys.append(("-" if descending else "") + name)
            elif isinstance(item, (ColumnElement, InstrumentedAttribute)):
                keys = None
            else:
                raise ValueError(
                    f"order_by takes column names ('name', '-created_at') or columns, got {item!r}"
                )
        if keys is None:
            return None
        return tuple(keys) or (self._primary_key_names()[0],)

    def _ordering(self, order_by: OrderBy | Sequence[OrderBy] | None) -> list[Any]:
        if order_by is None:
            return list(self._mapper.primary_key)
        ordering: list[Any] = []
        for item in self._order_items(order_by):
            if isinstance(item, str):
                name, descending = _order_name(item)
                column = self._column(name, "order by")  # allowed: _order_keys checked it
                ordering.append(column.desc() if descending else column.asc())
            else:
                ordering.append(item)
        return ordering
