"""``BaseRepository[T]``: CRUD for one model on a session it is given (seeds 000 and 001).

A repository flushes so that ids and constraint errors appear at the call that caused
them, and never commits: the unit of work, the request or the caller owns the transaction.
"""

from __future__ import annotations

import builtins
import typing
import warnings
import weakref
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, Final, Generic, Literal, NoReturn, TypeVar, overload

from sqlalchemy import Column, ColumnElement, Table, func, insert, inspect, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import ColumnProperty, InstrumentedAttribute, Mapper, RelationshipProperty
from sqlalchemy.orm.attributes import instance_state, set_committed_value
from sqlalchemy.orm.interfaces import ORMOption
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.sql.compiler import InsertmanyvaluesSentinelOpts

from aegis_shared.database import (
    bulk,
    fast_path,
    integer_ranges,
    lookups,
    pagination,
    relations,
    scopes,
    writes,
)
from aegis_shared.database.pagination import KeysetPage, whole_number
from aegis_shared.database.pagination import Page as Page  # its home before pagination.py
from aegis_shared.database.scopes import Scope
from aegis_shared.errors.exceptions import DuplicateEntityError, EntityNotFoundError
from aegis_shared.models.types import UTCDateTime

ModelT = TypeVar("ModelT")
ItemT = TypeVar("ItemT")

MAX_PAGE_SIZE_KEY = "aegis.max_page_size"
Filters = Mapping[str, Any]
Where = Sequence[ColumnElement[bool]]
OrderBy = str | ColumnElement[Any] | InstrumentedAttribute[Any]


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


def _shown(name: Any) -> str:
    """``name`` as an error message quotes it: a client may have sent it, so never long."""
    text = repr(name)
    return text if len(text) <= 60 else text[:57] + "..."


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


class ListTruncatedWarning(UserWarning):
    """``list()`` was called without a ``limit`` and more rows matched than it returns.

    Turn it into an error in tests with ``-W error::aegis_shared.database.ListTruncatedWarning``
    (or ``warnings.simplefilter("error", ListTruncatedWarning)``)."""


class BaseRepository(Generic[ModelT]):
    """Create, read, update and delete rows of one model.

    Both constructions of the seeds work::

        class UserRepository(BaseRepository[User]):
            def __init__(self, session: AsyncSession):
                super().__init__(session, User)            # seed 001

        class UserAccessLogRepository(BaseRepository[UserAccessLog]):
            def __init__(self, session: AsyncSession) -> None:
                super().__init__(session)                  # seed 000: model from the generic
    """

    model: type[ModelT]
    #: Most rows ``list()`` returns when no ``limit`` is given (it warns with
    #: :class:`ListTruncatedWarning` when more match); ``None``: the page-size cap,
    #: ``max_limit`` or else the manager's ``max_page_size`` (1000).
    default_limit: ClassVar[int | None] = None
    #: Largest ``limit`` accepted; ``None`` takes the manager's ``max_page_size`` (1000).
    max_limit: ClassVar[int | None] = None
    #: Fields ``filters`` and ``exclude`` may name (``list``, ``count``, ``exists``,
    #: ``paginate``, ``get_by``): columns (``"title"``) and relationship paths
    #: (``"author__username"``), without the lookup, which is then free: ``"title"``
    #: allows ``title__icontains`` too. ``None``: every column and path. Declare it when
    #: filters come from a request, so clients cannot test values they must not see.
    filterable: ClassVar[frozenset[str] | None] = None
    #: Columns ``order_by`` may name, in either direction (``"age"``, ``"-age"``); ``None``:
    #: every column. Column objects (``User.age``) are code, not request input, and pass.
    sortable: ClassVar[frozenset[str] | None] = None
    #: Fields a mapping given to ``create`` or ``create_many``, or ``update(**fields)``, may
    #: set; ``None``: every mapped attribute. Model instances are built by the application
    #: and pass as they are; ``soft_delete`` and ``restore`` still set ``deleted_at``.
    writable: ClassVar[frozenset[str] | None] = None
    _declares_allowlists: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):
            if typing.get_origin(base) is BaseRepository:
                (arg,) = typing.get_args(base)
                if isinstance(arg, type):
                    cls.model = arg
        for attribute, _ in _ALLOWLISTS:
            if attribute in cls.__dict__:
                setattr(
                    cls, attribute, _allowlist(cls.__name__, attribute, cls.__dict__[attribute])
                )
        cls._declares_allowlists = any(getattr(cls, name) is not None for name, _ in _ALLOWLISTS)
        model = getattr(cls, "model", None)
        if cls._declares_allowlists and isinstance(model, type):
            mapper: Any = inspect(model, raiseerr=False)
            if isinstance(mapper, Mapper):
                # A name that is not mapped is a typo that would refuse every request using
                # it: say so when the module is imported, not at the first request.
                _check_allowlists(cls, mapper)
                _checked[cls] = mapper

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
                self._refuse(f"{purpose} {_shown(name)}", allowed)
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
        refused = sorted({_shown(name) for name in names if name not in allowed})
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

    def _ranges(self) -> integer_ranges.ColumnRanges:
        return integer_ranges.ranges_for(self._mapper, self._dialect())

    def _query(
        self,
        filters: Filters | None,
        exclude: Filters | None = None,
        where: Where | None = None,
        extra: tuple[builtins.list[lookups.Term], builtins.list[tuple[Any, ...]]] | None = None,
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
        return tuple(keys) or (
            self._mapper.get_property_by_column(self._mapper.primary_key[0]).key,
        )

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

    def _values(self, data: Mapping[str, Any], purpose: str) -> dict[str, Any]:
        self._check_writable(data)
        known = self._mapper.attrs.keys()
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(
                f"{self._name} has no field {', '.join(map(repr, unknown))} to {purpose}; "
                f"known: {', '.join(sorted(known))}"
            )
        return dict(data)

    def _build(self, entity: ModelT | Mapping[str, Any]) -> ModelT:
        if isinstance(entity, Mapping):
            return self.model(**self._values(entity, "set"))
        if not isinstance(entity, self.model):
            raise TypeError(
                f"{type(self).__name__}.create() takes a {self._name} or a mapping of its "
                f"fields, got {type(entity).__name__}"
            )
        return entity

    # -- writes ---------------------------------------------------------------------------

    async def create(self, entity: ModelT | Mapping[str, Any]) -> ModelT:
        """Add ``entity`` (an instance, or a mapping of its fields) and flush; returns it
        with its generated id."""
        instance = self._build(entity)
        self.session.add(instance)
        await self.session.flush()
        return instance

    @overload
    async def create_many(
        self, entities: Iterable[ModelT | Mapping[str, Any]], *, returning: Literal[True] = True
    ) -> list[ModelT]: ...

    @overload
    async def create_many(
        self,
        entities: Iterable[ModelT | Mapping[str, Any]],
        *,
        returning: Literal[False],
        skip_duplicates: bool = False,
    ) -> int: ...

    async def create_many(
        self,
        entities: Iterable[ModelT | Mapping[str, Any]],
        *,
        returning: bool = True,
        skip_duplicates: bool = False,
    ) -> list[ModelT] | int:
        """Add many rows: one INSERT per batch of rows, never one per row.

        ``returning=False`` is for loads nobody reads back: no objects are made, the rows
        go to PostgreSQL with ``COPY`` (other backends: multi-row INSERTs), and the number
        of rows written is returned. Python-side column defaults are applied, server-side
        ones (ids, ``now()``) filled by the database; everything stays inside the
        session's transaction.

        With ``returning=True`` (the default):

        New rows of a model with an auto-incremented id go out as multi-row
        ``INSERT ... RETURNING`` statements (a batch holds up to the driver's page size,
        1000 rows by default), because the ORM's flush sends one statement per row on SQLite,
        which cannot return the rows of a multi-row INSERT in order. The instances come back
        persistent in the session with their ids and defaults, as after a flush. Anything
        else (relationships set, ids given, insert or flush events, ...) is flushed normally.

        ``skip_duplicates=True`` (with ``returning=False``) leaves out rows whose unique
        key (primary key or a unique constraint) is already taken, also by a concurrent
        transaction, instead of raising ``DuplicateEntityError``: adding the same thing
        twice, or from 100 requests at once, stores it once. Returns the rows inserted
        (MariaDB reports skipped rows as matched, so there: the rows given). Rows go out
        as multi-row ``INSERT ... ON CONFLICT DO NOTHING`` (MariaDB: ``ON DUPLICATE KEY
        UPDATE`` as a no-op), never COPY, and must be plain column values.
        """
        if skip_duplicates and returning:
            raise ValueError(
                "create_many(skip_duplicates=True) returns the number of rows inserted, not "
                "objects: pass returning=False too"
            )
        if not returning:
            items = list(entities)
            if self.writable is not None:
                for item in items:
                    if isinstance(item, Mapping):
                        self._check_writable(item)
            written = await bulk.insert_rows(
                self.session, self._mapper, items, self._name, skip_duplicates=skip_duplicates
            )
            if written is not None:
                return written
            if skip_duplicates:
                raise ValueError(
                    "create_many(skip_duplicates=True) takes rows of column values; these "
                    "need the ORM (related objects, SQL expressions or persistent instances)"
                )
            flushed = [self._build(entity) for entity in items]
            self.session.add_all(flushed)
            await self.session.flush()
            return len(flushed)
        instances = [self._build(entity) for entity in entities]
        if not instances:
            return instances
        batches = self._insert_batches(instances)
        if batches is None:
            self.session.add_all(instances)
            await self.session.flush()
        else:
            for batch in batches:
                await self._insert_batch(batch)
        return instances

    def _table_columns(self) -> list[tuple[str, Column[Any]]]:
        return bulk.table_columns(self._mapper)

    def _insert_batches(
        self, instances: list[ModelT]
    ) -> list[list[tuple[InstanceState[Any], dict[str, Any]]]] | None:
        """The rows for :meth:`_insert_batch`, grouped by the columns they set, or ``None``
        when the instances need the ORM's flush."""
        mapper, table = self._mapper, self._mapper.local_table
        flush_events = self.session.sync_session.dispatch
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
            or not self.session.get_bind(mapper=mapper).dialect.insert_executemany_returning
            or len({id(instance) for instance in instances}) != len(instances)
        ):
            return None
        columns = self._table_columns()
        groups: dict[tuple[str, ...], list[tuple[InstanceState[Any], dict[str, Any]]]] = {}
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
                if bulk.is_sql_expression(value):
                    return None
                if value is None and not (key in state.dict and column.type.should_evaluate_none):
                    if not (column.primary_key or column.default or column.server_default):
                        row[column.key] = None  # an explicit NULL, as the ORM's flush sends
                    continue
                row[column.key] = value
            groups.setdefault(tuple(sorted(row)), []).append((state, row))
        return list(groups.values())

    async def _insert_batch(self, batch: list[tuple[InstanceState[Any], dict[str, Any]]]) -> None:
        """INSERT ... RETURNING the rows of one group, then make their instances persistent."""
        columns = self._table_columns()
        table = self._mapper.local_table
        assert isinstance(table, Table) and table.autoincrement_column is not None
        dialect = self.session.get_bind(mapper=self._mapper).dialect
        # PostgreSQL and MariaDB return the rows in parameter order; SQLite cannot, so there
        # rows are matched by id, which it hands out in ascending order of the VALUES rows.
        ordered = bool(
            dialect.insertmanyvalues_implicit_sentinel
            & InsertmanyvaluesSentinelOpts.ANY_AUTOINCREMENT
        )
        statement = insert(table).returning(
            *(column for _, column in columns), sort_by_parameter_order=ordered
        )
        result = await self.session.execute(statement, [row for _, row in batch])
        rows = list(result.all())
        if len(rows) != len(batch):
            raise RuntimeError(f"INSERT of {len(batch)} {self._name} rows returned {len(rows)}")
        if not ordered:
            pk = next(i for i, (_, c) in enumerate(columns) if c is table.autoincrement_column)
            rows.sort(key=lambda returned: returned[pk])
        for (state, _), returned in zip(batch, rows, strict=True):
            for index, (key, _) in enumerate(columns):
                set_committed_value(state.obj(), key, returned[index])
        states = {state for state, _ in batch}
        self.session.add_all([state.obj() for state, _ in batch])
        # What a flush does with the rows it inserted: persistent, in the identity map, and
        # expunged again (transient) if the transaction rolls back.
        self.session.sync_session._register_persistent(states)

    async def update(self, id: Any, /, **fields: Any) -> ModelT:
        """Set ``fields`` on the row with ``id`` and flush; raises ``EntityNotFoundError``.

        With ``writable`` declared, only those fields (ValueError before any SQL). With no
        fields, the entity is returned unchanged (no UPDATE is sent). A soft-deleted row is
        not found, as by :meth:`get_one`: :meth:`restore` is the way back to it.
        """
        if not fields:
            # Nothing to change (a PATCH with an empty body): the row as it is, still
            # EntityNotFoundError when there is none, and no UPDATE.
            return await self.get_one(id)
        values = self._values(fields, "update")
        pk_names = {col.key for col in self._mapper.primary_key if col.key is not None}
        changed_keys = sorted(pk_names & set(values))
        if changed_keys:
            raise ValueError(f"update() cannot change the primary key {', '.join(changed_keys)}")
        instance = await self.get_one(id)
        for name, value in values.items():
            setattr(instance, name, value)
        await self.session.flush()
        return instance

    def _deleted_at(self) -> InstrumentedAttribute[Any]:
        if "deleted_at" not in self._mapper.column_attrs:
            raise TypeError(
                f"{self._name} has no deleted_at column, so it cannot be soft-deleted; "
                "add SoftDeleteMixin or use delete()"
            )
        return self._column("deleted_at", "soft delete")

    async def soft_delete(self, id: Any) -> ModelT:
        """Mark the row deleted by setting ``deleted_at`` to now; the row stays, and the
        reads leave it out from then on (see :mod:`aegis_shared.database.scopes`).

        Idempotent: a row already soft-deleted is returned as it is, its ``deleted_at``
        (the first deletion's moment) unchanged and no UPDATE sent. Raises
        ``EntityNotFoundError`` when no row has ``id``."""
        column = self._deleted_at()
        instance = await self.get_one(id, with_deleted=True)
        if await self._deleted_value(instance) is not None:
            return instance
        aware = isinstance(column.type, UTCDateTime) or getattr(column.type, "timezone", False)
        now = datetime.now(UTC)
        setattr(instance, scopes.COLUMN, now if aware else now.replace(tzinfo=None))
        await self.session.flush()
        return instance

    async def restore(self, id: Any) -> ModelT:
        """Undo :meth:`soft_delete`: finds the row whether it is soft-deleted or not and
        clears its ``deleted_at``. Idempotent: a row that is not deleted is returned as it
        is, with no UPDATE. Raises ``EntityNotFoundError`` when no row has ``id``."""
        self._deleted_at()
        instance = await self.get_one(id, with_deleted=True)
        if await self._deleted_value(instance) is None:
            return instance
        setattr(instance, scopes.COLUMN, None)
        await self.session.flush()
        return instance

    async def delete(self, id: Any) -> None:
        """Delete the row with ``id`` (ORM cascades apply); raises ``EntityNotFoundError``.

        A hard delete: it finds a soft-deleted row too (purging one is what it is for, as
        in seed 001's ``soft_delete`` then ``delete``)."""
        instance = await self.get_one(id, with_deleted=True)
        await self.session.delete(instance)
        await self.session.flush()

    # -- reads ----------------------------------------------------------------------------

    async def get_by_id(
        self,
        id: Any,
        *,
        options: Sequence[ORMOption] | None = None,
        with_deleted: bool = False,
        only_deleted: bool = False,
    ) -> ModelT | None:
        """The row with primary key ``id``, or ``None``.

        With ``options`` (``selectinload(...)``) the row is read again even if this session
        already holds it, so the requested relationships are really loaded. An integer id
        its column cannot hold (``2**70``) is not found, without a query. A soft-deleted
        row is ``None`` unless ``with_deleted=True`` (``only_deleted=True``: only a
        soft-deleted one), also when the session already holds its object.
        """
        scope = self._scope(with_deleted, only_deleted)
        if self._ranges().impossible_id(id):
            return None
        if options:
            found = await self.session.get(self.model, id, options=options, populate_existing=True)
            return await self._admitted(found, scope)
        fast = await self._fast_get(id, scope)
        if fast is not fast_path.UNAVAILABLE:
            return fast  # type: ignore[no-any-return]
        return await self._admitted(await self.session.get(self.model, id), scope)

    def _fast_reader(self) -> tuple[Any, fast_path.ModelReader] | None:
        """The engine and reader for a fast read now, or ``None`` for the ORM path."""
        engine = fast_path.session_is_idle(self.session)
        if engine is None:
            return None
        reader = fast_path.reader_for(self._mapper, engine)
        return None if reader is None else (engine, reader)

    async def _fast_rows(
        self,
        ready: tuple[Any, fast_path.ModelReader] | None,
        kind: str,
        shape: Any,
        values: Mapping[str, Any],
    ) -> list[Any] | None:
        """Rows of a fast read of ``kind`` and ``shape``, or ``None`` for the ORM path."""
        if ready is None:
            return None
        engine, reader = ready
        rows = await fast_path.run(self.session, engine, reader.plan(kind, shape), values)
        return None if isinstance(rows, fast_path.Unavailable) else rows

    async def _fast_get(self, id: Any, scope: Scope) -> Any:
        ready = self._fast_reader() if id is not None else None
        if ready is None:
            return fast_path.UNAVAILABLE
        cached = fast_path.cached_instance(self.session, ready[1], id)
        if cached is not None:
            return cached if self._visible(cached, scope) else None
        rows = await self._fast_rows(ready, "get", scopes.terms(self._mapper, scope), {"pk": id})
        if rows is None:
            return fast_path.UNAVAILABLE
        return fast_path.attach(self.session, ready[1], rows)[0] if rows else None

    async def get_one(
        self,
        id: Any,
        *,
        options: Sequence[ORMOption] | None = None,
        with_deleted: bool = False,
        only_deleted: bool = False,
    ) -> ModelT:
        """The row with primary key ``id``; raises ``EntityNotFoundError`` if there is none
        (or it is soft-deleted: ``with_deleted`` and ``only_deleted`` as :meth:`get_by_id`)."""
        instance = await self.get_by_id(
            id, options=options, with_deleted=with_deleted, only_deleted=only_deleted
        )
        if instance is None:
            raise EntityNotFoundError(self._name, id)
        return instance

    async def get_by(
        self, *, with_deleted: bool = False, only_deleted: bool = False, **filters: Any
    ) -> ModelT | None:
        """The one row matching ``filters`` (the grammar of :meth:`list`), or ``None``.

        Meant for unique fields: ``get_by(slug="how-to-train")``,
        ``get_by(email__ilike="jake@example.com")``. Raises ``ValueError`` when more than
        one row matches, rather than picking one by chance (one statement either way: it
        asks for two rows). ``filterable`` applies, as to every filter. Soft-deleted rows
        are left out unless ``with_deleted=True`` (``only_deleted=True``: only those).
        """
        if not filters:
            raise ValueError(
                f"get_by() of {self._name} needs at least one filter, for example "
                "get_by(slug='how-to-train'); use get_by_id() for the primary key"
            )
        query = self._query(filters, scope=self._scope(with_deleted, only_deleted))
        if query is None:
            return None
        rows = await self._list(query, self._order_keys(None), None, 0, 2, None)
        if len(rows) > 1:
            described = ", ".join(f"{name}={lookups.shown(v)}" for name, v in filters.items())
            raise ValueError(
                f"More than one {self._name} matches {described}; get_by() needs filters "
                "that match at most one row (a unique field), or use list()"
            )
        return rows[0] if rows else None

    async def get_one_by(
        self, *, with_deleted: bool = False, only_deleted: bool = False, **filters: Any
    ) -> ModelT:
        """:meth:`get_by`, raising ``EntityNotFoundError`` naming the filters ("Article
        with slug 'how-to-train' not found") when no row matches."""
        instance = await self.get_by(
            with_deleted=with_deleted, only_deleted=only_deleted, **filters
        )
        if instance is None:
            raise EntityNotFoundError(self._name, filters=filters)
        return instance

    async def list(
        self,
        skip: int = 0,
        limit: int | None = None,
        filters: Filters | None = None,
        order_by: OrderBy | Sequence[OrderBy] | None = None,
        options: Sequence[ORMOption] | None = None,
        *,
        exclude: Filters | None = None,
        where: Where | None = None,
        with_deleted: bool = False,
        only_deleted: bool = False,
    ) -> list[ModelT]:
        """Rows matching ``filters``, ordered by ``order_by`` (column names, ``-name`` for
        descending; the primary key by default), ``limit`` rows from ``skip``.

        Without a ``limit``, at most ``default_limit`` rows (by default the page-size
        cap: ``max_limit``, else the manager's ``max_page_size``, 1000); when more rows
        match, those are returned and a :class:`ListTruncatedWarning` says so (one
        statement either way: it asks for one row more). Give a ``limit`` and page with
        ``skip``, :meth:`paginate` or :meth:`keyset` for more.

        ``filters`` maps a field, optionally with a lookup, to a value: ``{"age__ge": 18,
        "author__username": "jake", "tags__name__in": ["a", "b"]}``; a plain field with
        ``None`` means IS NULL, with a list IN (see :mod:`aegis_shared.database.lookups`
        for every lookup). ``exclude`` takes the same grammar and leaves out the rows that
        match all of it; ``where`` adds SQLAlchemy expressions (``User.age > User.rank``).
        Wrong names, lookups or values raise ``ValueError`` before any SQL. An integer no
        row can hold matches nothing (and is dropped from an IN list), without a query.

        Soft-deleted rows are left out unless ``with_deleted=True`` (``only_deleted=True``:
        only those); relationship paths are not scoped (see :mod:`scopes`)."""
        query = self._query(filters, exclude, where, scope=self._scope(with_deleted, only_deleted))
        keys = self._order_keys(order_by)
        skip, given = self._skip(skip), limit
        limit = self._limit(limit)
        if query is None:
            return []
        if given is not None:
            return await self._list(query, keys, order_by, skip, limit, options)
        rows = await self._list(query, keys, order_by, skip, limit + 1, options)
        if len(rows) > limit:
            del rows[limit:]
            warnings.warn(
                ListTruncatedWarning(
                    f"{type(self).__name__}.list() was given no limit and returned the "
                    f"first {limit} {self._name} rows of more that match; pass limit= and "
                    "page with skip=, paginate() or keyset() to read the rest"
                ),
                stacklevel=2,
            )
        return rows

    async def _list(
        self,
        query: lookups.Query,
        keys: tuple[str, ...] | None,
        order_by: OrderBy | Sequence[OrderBy] | None,
        skip: int,
        limit: int,
        options: Sequence[ORMOption] | None,
    ) -> builtins.list[ModelT]:
        if not options and keys is not None:
            rows = await self._fast_list(query, keys, skip, limit)
            if rows is not None:
                return rows
        statement = select(self.model).where(*query.conditions(self._mapper))
        statement = statement.order_by(*self._ordering(order_by))
        statement = statement.offset(skip).limit(limit)
        if options:
            statement = statement.options(*options)
        result = await self.session.scalars(statement)
        return list(result.all())

    async def _fast_list(
        self, query: lookups.Query, keys: tuple[str, ...], skip: int, limit: int
    ) -> builtins.list[ModelT] | None:
        shape = query.fast()
        ready = self._fast_reader() if shape is not None else None
        if ready is None or shape is None:
            return None
        values = {**shape[1], "limit": limit, "offset": skip}
        rows = await self._fast_rows(ready, "list", (shape[0], keys), values)
        return None if rows is None else fast_path.attach(self.session, ready[1], rows)

    async def count(
        self,
        filters: Filters | None = None,
        *,
        exclude: Filters | None = None,
        where: Where | None = None,
        with_deleted: bool = False,
        only_deleted: bool = False,
    ) -> int:
        """Number of rows matching ``filters``, ``exclude`` and ``where`` (as :meth:`list`
        takes them, soft-deleted rows left out unless ``with_deleted=True``); a
        relationship path counts each row once."""
        query = self._query(filters, exclude, where, scope=self._scope(with_deleted, only_deleted))
        if query is None:
            return 0
        return await self._count(query)

    async def _count(self, query: lookups.Query) -> int:
        shape = query.fast()
        if shape is not None:
            rows = await self._fast_rows(self._fast_reader(), "count", shape[0], shape[1])
            if rows is not None:
                return int(rows[0][0])
        statement = (
            select(func.count()).select_from(self.model).where(*query.conditions(self._mapper))
        )
        return int(await self.session.scalar(statement) or 0)

    def _id_terms(
        self, id: Any
    ) -> tuple[builtins.list[lookups.Term], builtins.list[tuple[Any, ...]]]:
        """Terms for "the primary key is ``id``" (a tuple for a composite key)."""
        keys = [self._mapper.get_property_by_column(c).key for c in self._mapper.primary_key]
        parts = id if isinstance(id, tuple) else (id,)
        if len(parts) != len(keys):
            raise ValueError(
                f"{self._name} has a primary key of {len(keys)} column(s) "
                f"({', '.join(keys)}); pass the id as {len(keys)} value(s) in that order, "
                f"got {lookups.shown(id)}"
            )
        terms = [lookups.Term((), key, "eq", 1) for key in keys]
        return terms, [(part,) for part in parts]

    async def exists(
        self,
        id: Any = None,
        *,
        filters: Filters | None = None,
        exclude: Filters | None = None,
        where: Where | None = None,
        with_deleted: bool = False,
        only_deleted: bool = False,
        **lookup_filters: Any,
    ) -> bool:
        """True when a row with ``id`` (a tuple for a composite primary key) and matching
        ``filters``, ``exclude``, ``where`` and keyword filters exists:
        ``exists(email="a@example.com")``, ``exists(5, filters={"active": True})``.
        Soft-deleted rows do not count unless ``with_deleted=True`` (``only_deleted=True``:
        only those do).

        One statement that stops at the first row."""
        if lookup_filters:
            if filters is not None and set(filters) & set(lookup_filters):
                raise ValueError("exists() got the same filter in filters= and as a keyword")
            filters = {**(filters or {}), **lookup_filters}
        extra = self._id_terms(id) if id is not None else None
        scope = self._scope(with_deleted, only_deleted)
        query = self._query(filters, exclude, where, extra, scope)
        if query is None or (id is not None and self._ranges().impossible_id(id)):
            return False
        shape = query.fast()
        if shape is not None:
            values = {**shape[1], "limit": 1}
            rows = await self._fast_rows(self._fast_reader(), "exists", shape[0], values)
            if rows is not None:
                return bool(rows)
        statement = select(func.count()).select_from(
            select(*self._mapper.primary_key)
            .where(*query.conditions(self._mapper))
            .limit(1)
            .subquery()
        )
        return bool(await self.session.scalar(statement))

    async def paginate(
        self,
        page: int | None = None,
        page_size: int | None = None,
        filters: Filters | None = None,
        order_by: OrderBy | Sequence[OrderBy] | None = None,
        options: Sequence[ORMOption] | None = None,
        *,
        offset: int | None = None,
        limit: int | None = None,
        exclude: Filters | None = None,
        where: Where | None = None,
        with_deleted: bool = False,
        only_deleted: bool = False,
    ) -> Page[ModelT]:
        """One page of rows with the total count (two statements), by page number or by
        offset: ``paginate(page=2, page_size=20)`` (pages from 1) or ``paginate(offset=20,
        limit=20)`` (RealWorld's ``?limit=20&offset=0``); 20 rows per page by default.
        Mixing the two forms raises ``ValueError``. ``filters``, ``exclude``, ``where``,
        ``with_deleted`` and ``only_deleted`` as :meth:`list` takes them.

        The :class:`Page` holds ``items``, ``total``, ``offset``, ``limit`` (= ``page_size``),
        ``page`` (in the offset form, the page the first row falls on) and ``has_next``.
        For deep pages of large tables, :meth:`keyset` reads at the same cost at any depth."""
        number, skip, size = pagination.page_window(page, page_size, offset, limit, 20)
        size = self._limit(size)
        scoped = {"with_deleted": with_deleted, "only_deleted": only_deleted}
        items = await self.list(
            skip=skip,
            limit=size,
            filters=filters,
            order_by=order_by,
            options=options,
            exclude=exclude,
            where=where,
            **scoped,
        )
        total = await self.count(filters, exclude=exclude, where=where, **scoped)
        number = skip // size + 1 if number is None else number
        return Page(items=items, total=total, page=number, page_size=size, offset=skip)

    async def keyset(
        self,
        after: str | None = None,
        limit: int = 20,
        filters: Filters | None = None,
        order_by: str | Sequence[str] | None = None,
        options: Sequence[ORMOption] | None = None,
        *,
        exclude: Filters | None = None,
        where: Where | None = None,
        with_total: bool = False,
        with_deleted: bool = False,
        only_deleted: bool = False,
    ) -> KeysetPage[ModelT]:
        """The ``limit`` rows after the token ``after`` (``None``: the first page), in the
        order of ``order_by`` (column names, ``-name`` descending, any mix; the primary key
        by default and always last, as the tie-breaker); keyset (cursor) pagination.

        ``page = await repo.keyset(limit=20, order_by=["-created_at"])``, then
        ``await repo.keyset(page.next, limit=20, order_by=["-created_at"])`` while
        ``page.next`` is not ``None``. One statement per page, on the fast path, at the
        same cost at any depth; rows inserted or deleted before the cursor between two
        fetches never make a later page skip or repeat a row. ``with_total=True`` adds the
        total count (a second statement). ``filters``, ``exclude``, ``where`` and the
        soft-delete scope as :meth:`list` takes them; give the same ones with each token.

        ValueError before any SQL for: a token that is damaged, not ours, or made for
        another model or ordering; an ordering column that is nullable (NULLs have no
        place in a keyset order) or given as a column object (the token holds values by
        column name). See :mod:`aegis_shared.database.pagination`."""
        scope = self._scope(with_deleted, only_deleted)
        query = self._query(filters, exclude, where, scope=scope)
        if not isinstance(with_total, bool):
            raise ValueError(f"with_total takes True or False, got {lookups.shown(with_total)}")
        if order_by is not None and any(
            not isinstance(item, str) for item in self._order_items(order_by)
        ):
            raise ValueError(
                "keyset() orders by column names ('-created_at'), not column objects: its "
                "token holds the ordering columns' values by name"
            )
        keys = self._order_keys(order_by)
        assert keys is not None  # names only, checked above
        order = pagination.keyset_order(self._mapper, keys)
        position = None if after is None else pagination.decode(self._mapper, order, after)
        size = self._limit(whole_number("limit", limit, 1))
        if query is None:
            return KeysetPage(items=[], next=None, limit=size, total=0 if with_total else None)
        rows = await self._keyset_rows(query, order, position, size + 1, options)
        token = None
        if len(rows) > size:
            del rows[size:]
            last = instance_state(rows[-1]).dict
            token = pagination.encode(self._mapper, order, [last[key.lstrip("-")] for key in order])
        total = await self._count(query) if with_total else None
        return KeysetPage(items=rows, next=token, limit=size, total=total)

    async def _keyset_rows(
        self,
        query: lookups.Query,
        order: tuple[str, ...],
        position: builtins.list[Any] | None,
        limit: int,
        options: Sequence[ORMOption] | None,
    ) -> builtins.list[ModelT]:
        shape = None if options else query.fast()
        ready = self._fast_reader() if shape is not None else None
        if ready is not None and shape is not None:
            values = {**shape[1], "limit": limit}
            if position is not None:
                values.update({f"k{index}": value for index, value in enumerate(position)})
            plan_shape = (shape[0], order, position is not None)
            rows = await self._fast_rows(ready, "keyset", plan_shape, values)
            if rows is not None:
                return fast_path.attach(self.session, ready[1], rows)
        columns = [
            (self._column(key.lstrip("-"), "order by").expression, key.startswith("-"))
            for key in order
        ]
        statement = select(self.model).where(*query.conditions(self._mapper))
        if position is not None:
            statement = statement.where(pagination.after_condition(columns, position))
        statement = statement.order_by(*pagination.order_clauses(columns)).limit(limit)
        if options:
            statement = statement.options(*options)
        return list((await self.session.scalars(statement)).all())

    # -- writes in one statement (the SQL is in writes.py) -------------------------------

    def _where_query(
        self, filters: Filters | None, purpose: str, scope: Scope = Scope.ALL
    ) -> lookups.Query | None:
        """``filters`` parsed for a bulk write; ValueError when there are none, because a
        write without them would change every row of the table."""
        if not filters:
            example = (
                "update_where({'id__in': [1, 2]}, ...)"
                if purpose == "update_where"
                else "delete_where(id__in=[1, 2])"
            )
            raise ValueError(
                f"{purpose}() of {self._name} needs at least one filter, for example "
                f"{example}: leaving the filters out would write every row of the table"
            )
        return self._query(filters, scope=scope)

    def _check_columns(self, names: Iterable[str], purpose: str) -> None:
        """Refuse names that are not column attributes (a relationship, a typo)."""
        columns = self._mapper.column_attrs
        unknown = sorted(_shown(name) for name in names if name not in columns)
        if unknown:
            raise ValueError(
                f"{self._name} has no column {', '.join(unknown)} to {purpose}; "
                f"known: {', '.join(sorted(columns.keys()))}"
            )

    def _set_values(
        self, values: Mapping[str, Any], purpose: str, *, primary_key: bool = False
    ) -> dict[str, Any]:
        """``values`` checked for a statement that bypasses the ORM: ``writable``, then
        columns only (a relationship cannot be set by an UPDATE), never the primary key."""
        self._check_writable(values)
        self._check_columns(values, purpose)
        pk_names = {self._mapper.get_property_by_column(c).key for c in self._mapper.primary_key}
        changed = sorted(pk_names & set(values))
        if changed and not primary_key:
            raise ValueError(f"{purpose}() cannot change the primary key {', '.join(changed)}")
        return dict(values)

    async def update_where(
        self,
        filters: Filters,
        /,
        *,
        with_deleted: bool = False,
        only_deleted: bool = False,
        **values: Any,
    ) -> int:
        """Set ``values`` on every row matching ``filters`` (the grammar of :meth:`list`)
        in one UPDATE, without reading the rows first; returns the number of rows matched.

        ``update_where({"author__username": "jake"}, published=False)``. ``filterable``
        governs the filters and ``writable`` the values (ValueError before any SQL, also
        for an unknown name, no filters or no values). Loaded objects the UPDATE changed
        show the new values (see :mod:`aegis_shared.database.writes`). As :meth:`update`,
        it leaves soft-deleted rows alone unless ``with_deleted=True``
        (``only_deleted=True``: only those)."""
        if not values:
            raise ValueError(f"update_where() of {self._name} needs at least one field to set")
        scope = self._scope(with_deleted, only_deleted)
        checked = self._set_values(values, "update")
        query = self._where_query(filters, "update_where", scope)
        if query is None:
            return 0
        return await writes.update_where(self.session, self._mapper, query, checked)

    async def delete_where(self, **filters: Any) -> int:
        """Delete every row matching ``filters`` (the grammar of :meth:`list`) in one
        DELETE, without reading the rows first; returns the number deleted. Idempotent:
        rows already gone (also deleted by a concurrent transaction) count 0, no error.
        Database-side cascades (``ondelete``) apply, ORM cascades do not. Deleted objects
        leave the session. A hard delete, as :meth:`delete`: soft-deleted rows match like
        any other (``delete_where(deleted_at__lt=cutoff)`` purges old ones)."""
        query = self._where_query(filters, "delete_where")
        if query is None:
            return 0
        return await writes.delete_where(self.session, self._mapper, query)

    async def get_or_create(
        self, defaults: Mapping[str, Any] | None = None, **lookup: Any
    ) -> tuple[ModelT, bool]:
        """The row whose columns equal ``lookup``, or a new one made of ``lookup`` and
        ``defaults``; with True when it was created.

        ``get_or_create(defaults={"bio": ""}, username="jake")``. Race-safe when
        ``lookup`` covers a unique key: of many concurrent calls (each in its own unit of
        work) one inserts and the others find its row, without an error. One SELECT when
        the row exists; else an INSERT that skips a taken key (MariaDB: inside a
        SAVEPOINT) and a SELECT. A soft-deleted row is found like any other (it still holds
        its unique key): check ``is_deleted`` and :meth:`restore` it if need be.
        ``lookup`` takes plain columns (no lookups, no paths);
        ``filterable`` governs them and ``writable`` them and ``defaults``. On SQLite and
        MariaDB the INSERT comes first when no transaction has begun (two statements
        whether the row exists or not: SQLite then waits for the write lock instead of
        failing to upgrade a read lock, MariaDB's snapshot is taken after the INSERT and
        sees the winner's row). Called in a transaction that has already read, concurrent
        calls there may raise ``TransactionConflictError`` (retry the unit of work; on
        SQLite, declare it ``write=True``)."""
        if not lookup:
            raise ValueError(
                f"get_or_create() of {self._name} needs the columns to look it up by, for "
                "example get_or_create(slug='how-to-train')"
            )
        fields = {**lookup, **(defaults or {})}
        if defaults is not None and not isinstance(defaults, Mapping):
            raise ValueError(f"defaults must be a mapping of field to value, got {defaults!r}")
        for name in lookup:
            if name not in self._mapper.column_attrs:
                self._check_column(name, "look up by")
        self._set_values(fields, "set", primary_key=True)
        query = self._query(lookup)
        if query is None:
            raise ValueError(
                f"get_or_create() of {self._name}: {lookups.shown(lookup)} holds a value its "
                "column cannot store"
            )
        dialect = self._dialect().name
        if dialect == "postgresql" or self.session.in_transaction():
            found = await self.get_by(with_deleted=True, **lookup)
            if found is not None:
                return found, False
        # With no transaction yet, SQLite and MariaDB try the INSERT first. SQLite: it
        # begins the transaction as a writer (BEGIN IMMEDIATE), which queues for the write
        # lock, where a transaction begun by a SELECT would fail to upgrade its read lock.
        # MariaDB: a SELECT first would fix the transaction's snapshot, and a row another
        # transaction commits meanwhile could then be neither inserted nor seen.
        created = await writes.insert_if_absent(self.session, self._mapper, fields)
        instance = await writes.select_one(
            self.session,
            self._mapper,
            query,
            locking=not created and dialect in ("mysql", "mariadb"),
        )
        if instance is None:
            raise DuplicateEntityError(
                f"{self._name} could not be created: another unique field of it is already "
                "taken by a different row. Look it up by that field, or change it"
            )
        return instance, created

    async def upsert(
        self,
        rows: Iterable[Mapping[str, Any]],
        *,
        conflict: Sequence[str],
        update: Sequence[str] | None = None,
    ) -> int:
        """Insert ``rows`` (mappings of column values, all with the same keys), and for
        those whose ``conflict`` columns are taken set the ``update`` columns (all the
        others given, by default; ``[]``: leave them) to the new values instead. Multi-row
        statements (``ON CONFLICT (...) DO UPDATE``; MariaDB: ``ON DUPLICATE KEY UPDATE``,
        which has no conflict target and fires on any unique key of the table, so give
        rows that can collide on ``conflict`` only). Returns the number of rows written.

        ``conflict`` must be the primary key or a unique constraint of the table;
        ``writable`` governs every key of the rows. ValueError before any SQL otherwise."""
        items = []
        for row in rows:
            if not isinstance(row, Mapping):
                raise ValueError(f"upsert() takes mappings of column values, got {_shown(row)}")
            items.append(dict(row))
        if not items:
            return 0
        keys = set(items[0])
        for item in items:
            if set(item) != keys:
                raise ValueError(
                    f"upsert() rows of {self._name} must all set the same fields; one sets "
                    f"{sorted(item)}, another {sorted(keys)}"
                )
        self._check_writable(keys)
        self._check_columns(keys, "set")
        if isinstance(conflict, str) or not conflict:
            raise ValueError("upsert() needs conflict=[column names of a unique key]")
        conflict_keys = [self._check_column(name, "upsert on") for name in conflict]
        missing = sorted(set(conflict_keys) - keys)
        if missing:
            raise ValueError(f"upsert() rows must set the conflict columns {missing}")
        by_key = dict(bulk.table_columns(self._mapper))
        table = self._mapper.local_table
        assert isinstance(table, Table)
        if frozenset(by_key[k].name for k in conflict_keys) not in writes.unique_keys(table):
            raise ValueError(
                f"upsert() conflict={sorted(conflict_keys)} is not the primary key or a "
                f"unique constraint of {self._name}; name the columns of one"
            )
        if update is None:
            update_keys = sorted(keys - set(conflict_keys))
        else:
            if isinstance(update, str):
                raise ValueError("upsert() takes update as a list of column names")
            update_keys = [self._check_column(name, "update") for name in update]
            not_given = sorted(set(update_keys) - keys)
            if not_given or set(update_keys) & set(conflict_keys):
                raise ValueError(
                    "upsert() update names columns the rows set and that are not "
                    f"conflict columns; got {sorted(update_keys)}"
                )
        return await writes.upsert(self.session, self._mapper, items, conflict_keys, update_keys)

    # -- links and counts through relationships (the SQL is in relations.py) -------------

    async def link(self, relationship: str, id: Any, ids: Any) -> int:
        """Link the row ``id`` to the rows ``ids`` (one id or several) through the
        many-to-many ``relationship``: follow, favorite, tag. One statement, idempotent:
        a link already there is left alone, an id with no row adds nothing. Returns the
        number of links added. Never loads the collection.

        ValueError before any SQL when ``relationship`` is not a many-to-many one with a
        ``secondary`` table (the message names those that are).
        """
        return await relations.link(self.session, self._mapper, relationship, id, ids)

    async def unlink(self, relationship: str, id: Any, ids: Any) -> int:
        """Remove the links from the row ``id`` to the rows ``ids``: unfollow, unfavorite.
        One DELETE; returns the number removed (0 when none were there)."""
        return await relations.unlink(self.session, self._mapper, relationship, id, ids)

    async def set_links(self, relationship: str, id: Any, ids: Any) -> relations.LinkChanges:
        """Make the links from the row ``id`` exactly those to ``ids`` (replace a tag set):
        one DELETE of the others, then one INSERT of the missing ones (none when ``ids``
        is empty); one statement on PostgreSQL. Returns ``LinkChanges(added, removed)``."""
        return await relations.set_links(self.session, self._mapper, relationship, id, ids)

    async def count_links(self, relationship: str, ids: Any) -> dict[Any, int]:
        """How many links (many-to-many) or children (one-to-many) each of the rows
        ``ids`` has, as ``{id: count}`` with zeros included: favorites per article,
        comments per article. One grouped statement for the whole set."""
        return await relations.count_links(self.session, self._mapper, relationship, ids)

    async def linked(self, relationship: str, ids: Any, to: Any) -> builtins.set[Any]:
        """Those of the rows ``ids`` that are linked to the row ``to`` of the related
        model: which articles of a page the current user favorited
        (``linked("favorited_by", article_ids, user_id)``), which authors they follow
        (``linked("followers", author_ids, user_id)``). One statement."""
        return await relations.linked(self.session, self._mapper, relationship, ids, to)
