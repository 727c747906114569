"""The writes of a repository through the session's flush: ``create``, ``create_many``,
``update``, ``soft_delete``, ``restore`` and ``delete``.

Each flushes, so that ids and constraint errors appear at the call that caused them, and
none commits. ``create_many``'s multi-row statements are built in
:mod:`aegis_shared.database.bulk`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal, overload

from sqlalchemy.orm import InstrumentedAttribute

from aegis_shared.database import bulk, scopes
from aegis_shared.database.repository.core import ModelT
from aegis_shared.database.repository.reads import Reads
from aegis_shared.models.types import UTCDateTime


class Writes(Reads[ModelT]):
    """Writes through the session's flush, so the ORM's cascades and events apply;
    ``update`` and the deletes find their row first, with ``get_one``."""

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
        batches = bulk.returning_batches(self.session, self._mapper, instances)
        if batches is None:
            self.session.add_all(instances)
            await self.session.flush()
        else:
            for batch in batches:
                await bulk.insert_returning(self.session, self._mapper, batch, self._name)
        return instances

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
        self._keep_primary_key(values, "update")
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
