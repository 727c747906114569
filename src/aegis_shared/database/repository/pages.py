"""The pages of a repository: ``paginate`` by page number or offset, with the total, and
``keyset`` (cursor) pages for large tables; the windows, orders and tokens are in
:mod:`aegis_shared.database.pagination`.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.orm.interfaces import ORMOption

from aegis_shared.database import annotations as annotating
from aegis_shared.database import fast_path, loading, lookups, pagination
from aegis_shared.database.pagination import KeysetPage, Page, whole_number
from aegis_shared.database.repository.core import Annotate, Filters, Load, ModelT, OrderBy, Where
from aegis_shared.database.repository.reads import Reads


class Pages(Reads[ModelT]):
    """``paginate`` (one page and the total) and ``keyset`` (one page after a token)."""

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
        load: Load | None = None,
        annotate: Annotate | None = None,
    ) -> Page[ModelT]:
        """One page of rows with the total count (two statements), by page number or by
        offset: ``paginate(page=2, page_size=20)`` (pages from 1) or ``paginate(offset=20,
        limit=20)`` (RealWorld's ``?limit=20&offset=0``); 20 rows per page by default.
        Mixing the two forms raises ``ValueError``. ``filters``, ``exclude``, ``where``,
        ``with_deleted``, ``only_deleted``, ``load`` and ``annotate`` as :meth:`list` takes
        them (``load`` adds a statement per relationship).

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
            load=load,
            annotate=annotate,
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
        load: Load | None = None,
        annotate: Annotate | None = None,
    ) -> KeysetPage[ModelT]:
        """The ``limit`` rows after the token ``after`` (``None``: the first page), in the
        order of ``order_by`` (column names, ``-name`` descending, any mix; the primary key
        by default and always last, as the tie-breaker); keyset (cursor) pagination.

        ``page = await repo.keyset(limit=20, order_by=["-created_at"])``, then
        ``await repo.keyset(page.next, limit=20, order_by=["-created_at"])`` while
        ``page.next`` is not ``None``. One statement per page, on the fast path, at the
        same cost at any depth; rows inserted or deleted before the cursor between two
        fetches never make a later page skip or repeat a row. ``with_total=True`` adds the
        total count (a second statement). ``filters``, ``exclude``, ``where``, the
        soft-delete scope, ``load`` and ``annotate`` as :meth:`list` takes them (``load``
        adds a statement per relationship; ``annotate`` reads on the ORM path); give the
        same filters and order with each token.

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
        paths = loading.parse(self._mapper, load)
        counts = annotating.parse(self._mapper, annotate, self._dialect())
        if query is None:
            return KeysetPage(items=[], next=None, limit=size, total=0 if with_total else None)
        rows = await self._keyset_rows(query, order, position, size + 1, options, paths, counts)
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
        paths: tuple[loading.Path, ...],
        counts: annotating.Annotations,
    ) -> builtins.list[ModelT]:
        shape = None if options or counts else query.fast()
        ready = self._fast_reader() if shape is not None else None
        plan = self._fast_load_plan(ready, paths)
        if ready is not None and shape is not None and plan is not None:
            values = {**shape[1], "limit": limit}
            if position is not None:
                values.update({f"k{index}": value for index, value in enumerate(position)})
            plan_shape = (shape[0], order, position is not None)
            rows = await self._fast_rows(ready, "keyset", plan_shape, values)
            if rows is not None:
                instances = fast_path.attach(self.session, ready[1], rows)
                if not paths or await loading.load_fast(self.session, ready[0], plan, instances):
                    return instances
        columns = [
            (self._column(key.lstrip("-"), "order by").expression, key.startswith("-"))
            for key in order
        ]
        statement = select(self.model).where(*query.conditions(self._mapper))
        if position is not None:
            statement = statement.where(pagination.after_condition(columns, position))
        statement = statement.order_by(*pagination.order_clauses(columns)).limit(limit)
        return await self._orm_rows(statement, options, paths, counts)
