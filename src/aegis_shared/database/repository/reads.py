"""The reads of a repository: one row (``get_by_id``, ``get_by``), rows (``list``),
``count`` and ``exists``; each on the fast path when its answer equals the ORM's.

The statements are built elsewhere (lookups, loading, annotations, fast_path); here each
call checks its input (see :mod:`.core`), then takes the fast path or the ORM's.
"""

from __future__ import annotations

import builtins
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm.interfaces import ORMOption

from aegis_shared.database import annotations as annotating
from aegis_shared.database import fast_path, loading, lookups, scopes
from aegis_shared.database.repository.core import (
    Annotate,
    Core,
    Filters,
    Load,
    ModelT,
    OrderBy,
    Where,
)
from aegis_shared.database.scopes import Scope
from aegis_shared.errors.exceptions import EntityNotFoundError


class ListTruncatedWarning(UserWarning):
    """``list()`` was called without a ``limit`` and more rows matched than it returns.

    Turn it into an error in tests with ``-W error::aegis_shared.database.ListTruncatedWarning``
    (or ``warnings.simplefilter("error", ListTruncatedWarning)``)."""


class Reads(Core[ModelT]):
    """``get_by_id``, ``get_one``, ``get_by``, ``get_one_by``, ``list``, ``count``, ``exists``."""

    async def get_by_id(
        self,
        id: Any,
        *,
        options: Sequence[ORMOption] | None = None,
        load: Load | None = None,
        with_deleted: bool = False,
        only_deleted: bool = False,
    ) -> ModelT | None:
        """The row with primary key ``id``, or ``None``.

        ``load=["author", "tags"]`` loads those relationships with it (see
        :mod:`~aegis_shared.database.loading`; ValueError for an unknown name, before any
        SQL). With ``options`` (``selectinload(...)``) the row is read again even if this
        session already holds it, so the requested relationships are really loaded. An
        integer id its column cannot hold (``2**70``) is not found, without a query. A
        soft-deleted row is ``None`` unless ``with_deleted=True`` (``only_deleted=True``:
        only a soft-deleted one), also when the session already holds its object.
        """
        scope = self._scope(with_deleted, only_deleted)
        paths = loading.parse(self._mapper, load)
        if self._ranges().impossible_id(id):
            return None
        combined = loading.with_options(self._mapper, paths, options)
        if options:
            found = await self.session.get(self.model, id, options=combined, populate_existing=True)
            return await self._admitted(found, scope)
        fast = await self._fast_get(id, scope, paths)
        if fast is not fast_path.UNAVAILABLE:
            return fast  # type: ignore[no-any-return]
        if combined:
            found = await self.session.get(self.model, id, options=combined, populate_existing=True)
        else:
            found = await self.session.get(self.model, id)
        return await self._admitted(found, scope)

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

    async def _fast_get(self, id: Any, scope: Scope, paths: tuple[loading.Path, ...] = ()) -> Any:
        ready = self._fast_reader() if id is not None else None
        plan = self._fast_load_plan(ready, paths)
        if ready is None or plan is None:
            return fast_path.UNAVAILABLE
        found = fast_path.cached_instance(self.session, ready[1], id)
        if found is not None:
            if not self._visible(found, scope):
                return None
        else:
            shape = scopes.terms(self._mapper, scope)
            rows = await self._fast_rows(ready, "get", shape, {"pk": id})
            if rows is None:
                return fast_path.UNAVAILABLE
            if not rows:
                return None
            found = fast_path.attach(self.session, ready[1], rows)[0]
        if paths and not await loading.load_fast(self.session, ready[0], plan, [found]):
            return fast_path.UNAVAILABLE
        return found

    def _fast_load_plan(
        self, ready: tuple[Any, fast_path.ModelReader] | None, paths: tuple[loading.Path, ...]
    ) -> Any:
        """How ``load=`` runs on the fast path (``()`` for nothing to load), or ``None``
        when a relationship needs the ORM: then the whole read takes the ORM path."""
        if not paths or ready is None:
            return ()
        return loading.fast_plan(self._mapper, paths, ready[0])

    async def get_one(
        self,
        id: Any,
        *,
        options: Sequence[ORMOption] | None = None,
        load: Load | None = None,
        with_deleted: bool = False,
        only_deleted: bool = False,
    ) -> ModelT:
        """The row with primary key ``id``; raises ``EntityNotFoundError`` if there is none
        (or it is soft-deleted). ``load``, ``with_deleted`` and ``only_deleted`` as
        :meth:`get_by_id` takes them."""
        instance = await self.get_by_id(
            id, options=options, load=load, with_deleted=with_deleted, only_deleted=only_deleted
        )
        if instance is None:
            raise EntityNotFoundError(self._name, id)
        return instance

    async def get_by(
        self,
        *,
        load: Load | None = None,
        with_deleted: bool = False,
        only_deleted: bool = False,
        **filters: Any,
    ) -> ModelT | None:
        """The one row matching ``filters`` (the grammar of :meth:`list`), or ``None``.

        Meant for unique fields: ``get_by(slug="how-to-train")``,
        ``get_by(email__ilike="jake@example.com")``. Raises ``ValueError`` when more than
        one row matches, rather than picking one by chance (one statement either way: it
        asks for two rows). ``filterable`` applies, as to every filter. Soft-deleted rows
        are left out unless ``with_deleted=True`` (``only_deleted=True``: only those).
        ``load=`` as :meth:`list` takes it (so ``load`` is not a filter name here).
        """
        if not filters:
            raise ValueError(
                f"get_by() of {self._name} needs at least one filter, for example "
                "get_by(slug='how-to-train'); use get_by_id() for the primary key"
            )
        query = self._query(filters, scope=self._scope(with_deleted, only_deleted))
        paths = loading.parse(self._mapper, load)
        if query is None:
            return None
        rows = await self._list(query, self._order_keys(None), None, 0, 2, None, paths)
        if len(rows) > 1:
            described = ", ".join(f"{name}={lookups.shown(v)}" for name, v in filters.items())
            raise ValueError(
                f"More than one {self._name} matches {described}; get_by() needs filters "
                "that match at most one row (a unique field), or use list()"
            )
        return rows[0] if rows else None

    async def get_one_by(
        self,
        *,
        load: Load | None = None,
        with_deleted: bool = False,
        only_deleted: bool = False,
        **filters: Any,
    ) -> ModelT:
        """:meth:`get_by`, raising ``EntityNotFoundError`` naming the filters ("Article
        with slug 'how-to-train' not found") when no row matches."""
        instance = await self.get_by(
            load=load, with_deleted=with_deleted, only_deleted=only_deleted, **filters
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
        load: Load | None = None,
        annotate: Annotate | None = None,
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
        only those); relationship paths are not scoped (see :mod:`scopes`).

        ``load=["author", "tags"]`` loads those relationships of every row, one statement
        per relationship (:mod:`~aegis_shared.database.loading`); ``annotate={"favorites_count":
        "favorited_by"}`` sets on each row the count of that to-many relationship, in the
        same statement (:mod:`~aegis_shared.database.annotations`). Both combine with
        ``options=`` and are checked before any SQL."""
        query = self._query(filters, exclude, where, scope=self._scope(with_deleted, only_deleted))
        keys = self._order_keys(order_by)
        skip, given = self._skip(skip), limit
        limit = self._limit(limit)
        paths = loading.parse(self._mapper, load)
        counts = annotating.parse(self._mapper, annotate, self._dialect())
        if query is None:
            return []
        if given is not None:
            return await self._list(query, keys, order_by, skip, limit, options, paths, counts)
        rows = await self._list(query, keys, order_by, skip, limit + 1, options, paths, counts)
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
        paths: tuple[loading.Path, ...] = (),
        counts: annotating.Annotations = annotating.NONE,
    ) -> builtins.list[ModelT]:
        if not options and keys is not None:
            rows = await self._fast_list(query, keys, skip, limit, paths, counts)
            if rows is not None:
                return rows
        statement = select(self.model).where(*query.conditions(self._mapper))
        statement = statement.order_by(*self._ordering(order_by))
        statement = statement.offset(skip).limit(limit)
        return await self._orm_rows(statement, options, paths, counts)

    async def _orm_rows(
        self,
        statement: Select[Any],
        options: Sequence[ORMOption] | None,
        paths: tuple[loading.Path, ...],
        counts: annotating.Annotations,
    ) -> builtins.list[ModelT]:
        """Run a ``select(model)`` on the ORM path with ``load=`` (as loader options),
        ``options=`` and ``annotate=`` (extra count columns, set on each row)."""
        if counts:
            statement = statement.add_columns(*annotating.columns(self._mapper, counts))
        combined = loading.with_options(self._mapper, paths, options)
        if combined:
            statement = statement.options(*combined)
        if not counts:
            result = await self.session.scalars(statement)
            return list(result.all())
        found = (await self.session.execute(statement)).all()
        instances = [row[0] for row in found]
        annotating.apply(instances, [tuple(row)[1:] for row in found], counts)
        return instances

    async def _fast_list(
        self,
        query: lookups.Query,
        keys: tuple[str, ...],
        skip: int,
        limit: int,
        paths: tuple[loading.Path, ...] = (),
        counts: annotating.Annotations = annotating.NONE,
    ) -> builtins.list[ModelT] | None:
        shape = query.fast()
        ready = self._fast_reader() if shape is not None else None
        plan = self._fast_load_plan(ready, paths)
        if ready is None or shape is None or plan is None:
            return None
        values = {**shape[1], "limit": limit, "offset": skip}
        if counts:
            counted = await annotating.fast_list(
                self.session, ready, shape[0], keys, counts, values
            )
            if counted is None:
                return None
            instances = counted
        else:
            rows = await self._fast_rows(ready, "list", (shape[0], keys), values)
            if rows is None:
                return None
            instances = fast_path.attach(self.session, ready[1], rows)
        if paths and not await loading.load_fast(self.session, ready[0], plan, instances):
            return None
        return instances

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
        keys = self._primary_key_names()
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
