"""``BaseRepository[T]``: CRUD for one model on a session it is given (seeds 000 and 001).

A repository flushes so that ids and constraint errors appear at the call that caused
them, and never commits: the unit of work, the request or the caller owns the transaction.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, TypeVar

from sqlalchemy import ColumnElement, Select, func, inspect, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute, Mapper
from sqlalchemy.orm.interfaces import ORMOption

from aegis_shared.errors.exceptions import EntityNotFoundError
from aegis_shared.models.types import UTCDateTime

ModelT = TypeVar("ModelT")
ItemT = TypeVar("ItemT")

MAX_PAGE_SIZE_KEY = "aegis.max_page_size"
Filters = Mapping[str, Any]
OrderBy = str | ColumnElement[Any] | InstrumentedAttribute[Any]


@dataclass(frozen=True)
class Page(Generic[ItemT]):
    """One page of a listing and the total number of matching rows."""

    items: Sequence[ItemT]
    total: int
    page: int
    page_size: int

    @property
    def pages(self) -> int:
        """Number of pages for ``total`` rows (0 when there are none)."""
        return math.ceil(self.total / self.page_size) if self.page_size else 0

    @property
    def has_next(self) -> bool:
        """True when a later page has rows."""
        return self.page < self.pages


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
    #: Rows ``list()`` returns when no ``limit`` is given.
    default_limit: ClassVar[int] = 100
    #: Largest ``limit`` accepted; ``None`` takes the manager's ``max_page_size`` (1000).
    max_limit: ClassVar[int | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):
            if typing.get_origin(base) is BaseRepository:
                (arg,) = typing.get_args(base)
                if isinstance(arg, type):
                    cls.model = arg

    def __init__(self, session: AsyncSession, model: type[ModelT] | None = None) -> None:
        if model is None:
            model = getattr(type(self), "model", None)
        if model is None:
            raise TypeError(
                f"{type(self).__name__} does not know its model: subclass "
                "BaseRepository[YourModel] or pass the model: super().__init__(session, YourModel)"
            )
        mapper = inspect(model, raiseerr=False)
        if not isinstance(mapper, Mapper):
            raise TypeError(f"{model!r} is not a mapped SQLAlchemy model class")
        self.session = session
        self.model = model
        self._mapper: Mapper[Any] = mapper

    # -- validation (before any SQL is sent) ------------------------------------------------

    @property
    def _name(self) -> str:
        return self.model.__name__

    def _column(self, name: str, purpose: str) -> InstrumentedAttribute[Any]:
        if not isinstance(name, str) or name not in self._mapper.column_attrs:
            known = ", ".join(sorted(self._mapper.column_attrs.keys()))
            raise ValueError(f"{self._name} has no column {name!r} to {purpose}; known: {known}")
        attribute: InstrumentedAttribute[Any] = getattr(self.model, name)
        return attribute

    def _conditions(self, filters: Filters | None) -> list[ColumnElement[bool]]:
        if filters is None:
            return []
        if not isinstance(filters, Mapping):
            raise ValueError(f"filters must be a mapping of column name to value, got {filters!r}")
        conditions: list[ColumnElement[bool]] = []
        for name, value in filters.items():
            column = self._column(name, "filter on")
            if value is None:
                conditions.append(column.is_(None))
            elif isinstance(value, (list, tuple, set, frozenset)):
                conditions.append(column.in_(list(value)))
            else:
                conditions.append(column == value)
        return conditions

    def _limit(self, limit: int | None) -> int:
        if limit is None:
            return self.default_limit
        cap = self.max_limit or int(self.session.info.get(MAX_PAGE_SIZE_KEY, 1000))
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be a whole number >= 0, got {limit!r}")
        if limit > cap:
            raise ValueError(
                f"limit {limit} is above the maximum of {cap} rows per call; page through "
                "the rows with skip, or raise max_limit / DATABASE_MAX_PAGE_SIZE"
            )
        return limit

    @staticmethod
    def _skip(skip: int) -> int:
        if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
            raise ValueError(f"skip must be a whole number >= 0, got {skip!r}")
        return skip

    def _ordering(self, order_by: OrderBy | Sequence[OrderBy] | None) -> list[Any]:
        if order_by is None:
            return list(self._mapper.primary_key)
        items = (
            [order_by]
            if isinstance(order_by, (str, ColumnElement, InstrumentedAttribute))
            else list(order_by)
        )
        ordering: list[Any] = []
        for item in items:
            if isinstance(item, str):
                descending = item.startswith("-")
                column = self._column(item.lstrip("-+"), "order by")
                ordering.append(column.desc() if descending else column.asc())
            elif isinstance(item, (ColumnElement, InstrumentedAttribute)):
                ordering.append(item)
            else:
                raise ValueError(
                    f"order_by takes column names ('name', '-created_at') or columns, got {item!r}"
                )
        return ordering

    def _values(self, data: Mapping[str, Any], purpose: str) -> dict[str, Any]:
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

    async def create_many(self, entities: Iterable[ModelT | Mapping[str, Any]]) -> list[ModelT]:
        """Add many rows in one flush: one INSERT per batch of rows, never one per row."""
        instances = [self._build(entity) for entity in entities]
        if instances:
            self.session.add_all(instances)
            await self.session.flush()
        return instances

    async def update(self, id: Any, **fields: Any) -> ModelT:
        """Set ``fields`` on the row with ``id`` and flush; raises ``EntityNotFoundError``."""
        if not fields:
            raise ValueError(f"update() of {self._name} needs at least one field to set")
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
        """Mark the row deleted by setting ``deleted_at`` to now; the row stays."""
        column = self._deleted_at()
        aware = isinstance(column.type, UTCDateTime) or getattr(column.type, "timezone", False)
        now = datetime.now(UTC)
        return await self.update(id, deleted_at=now if aware else now.replace(tzinfo=None))

    async def restore(self, id: Any) -> ModelT:
        """Undo :meth:`soft_delete`."""
        self._deleted_at()
        return await self.update(id, deleted_at=None)

    async def delete(self, id: Any) -> None:
        """Delete the row with ``id`` (ORM cascades apply); raises ``EntityNotFoundError``."""
        instance = await self.get_one(id)
        await self.session.delete(instance)
        await self.session.flush()

    # -- reads ----------------------------------------------------------------------------

    async def get_by_id(
        self, id: Any, *, options: Sequence[ORMOption] | None = None
    ) -> ModelT | None:
        """The row with primary key ``id``, or ``None``.

        With ``options`` (``selectinload(...)``) the row is read again even if this session
        already holds it, so the requested relationships are really loaded.
        """
        if options:
            return await self.session.get(
                self.model, id, options=options, populate_existing=True
            )
        return await self.session.get(self.model, id)

    async def get_one(self, id: Any, *, options: Sequence[ORMOption] | None = None) -> ModelT:
        """The row with primary key ``id``; raises ``EntityNotFoundError`` if there is none."""
        instance = await self.get_by_id(id, options=options)
        if instance is None:
            raise EntityNotFoundError(self._name, id)
        return instance

    def _select(self, filters: Filters | None, options: Sequence[ORMOption] | None) -> Select[Any]:
        statement = select(self.model).where(*self._conditions(filters))
        if options:
            statement = statement.options(*options)
        return statement

    async def list(
        self,
        skip: int = 0,
        limit: int | None = None,
        filters: Filters | None = None,
        order_by: OrderBy | Sequence[OrderBy] | None = None,
        options: Sequence[ORMOption] | None = None,
    ) -> list[ModelT]:
        """Rows matching ``filters`` (``None`` means IS NULL, a list means IN), ordered by
        ``order_by`` (column names, ``-name`` for descending; the primary key by default),
        ``limit`` rows (100 by default) from ``skip``."""
        statement = (
            self._select(filters, options)
            .order_by(*self._ordering(order_by))
            .offset(self._skip(skip))
            .limit(self._limit(limit))
        )
        result = await self.session.scalars(statement)
        return list(result.all())

    async def count(self, filters: Filters | None = None) -> int:
        """Number of rows matching ``filters``."""
        statement = select(func.count()).select_from(self.model).where(*self._conditions(filters))
        return int(await self.session.scalar(statement) or 0)

    async def exists(self, id: Any = None, *, filters: Filters | None = None) -> bool:
        """True when a row with ``id`` (and/or matching ``filters``) exists."""
        conditions = self._conditions(filters)
        if id is not None:
            (pk,) = self._mapper.primary_key
            conditions.append(pk == id)
        statement = select(func.count()).select_from(
            select(*self._mapper.primary_key).where(*conditions).limit(1).subquery()
        )
        return bool(await self.session.scalar(statement))

    async def paginate(
        self,
        page: int = 1,
        page_size: int = 20,
        filters: Filters | None = None,
        order_by: OrderBy | Sequence[OrderBy] | None = None,
        options: Sequence[ORMOption] | None = None,
    ) -> Page[ModelT]:
        """Page ``page`` (from 1) of ``page_size`` rows, with the total count."""
        if isinstance(page, bool) or not isinstance(page, int) or page < 1:
            raise ValueError(f"page must be a whole number >= 1, got {page!r}")
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise ValueError(f"page_size must be a whole number >= 1, got {page_size!r}")
        size = self._limit(page_size)
        items = await self.list(
            skip=(page - 1) * size, limit=size, filters=filters, order_by=order_by, options=options
        )
        total = await self.count(filters)
        return Page(items=items, total=total, page=page, page_size=size)
