"""The writes of a repository sent as statements of their own, not through the ORM's
flush: ``update_where``, ``delete_where`` and ``upsert`` in one statement each,
``get_or_create`` in one SELECT when the row exists.

Each checks its input here (ValueError before any SQL); the statements are built in
:mod:`aegis_shared.database.writes`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Table

from aegis_shared.database import bulk, lookups, writes
from aegis_shared.database.repository.core import Filters, ModelT
from aegis_shared.database.repository.reads import Reads
from aegis_shared.database.scopes import Scope
from aegis_shared.errors.exceptions import DuplicateEntityError


class DirectWrites(Reads[ModelT]):
    """Writes sent as statements of their own, not through the session's flush; the
    objects the session holds are kept in step with them."""

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
                raise ValueError(
                    f"upsert() takes mappings of column values, got {lookups.shown(row)}"
                )
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
        unknown = sorted(lookups.shown(name) for name in names if name not in columns)
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
        if not primary_key:
            self._keep_primary_key(values, purpose)
        return dict(values)
