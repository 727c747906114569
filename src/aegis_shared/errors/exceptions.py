"""One exception hierarchy for everything the data layer can raise.

Driver and SQLAlchemy errors never reach callers raw: :mod:`aegis_shared.errors.mapping`
turns them into these classes in one place and chains the original as ``__cause__``
(and keeps it as ``.orig``), so callers handle PostgreSQL, SQLite and MariaDB alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class DatabaseError(Exception):
    """Root of every error raised by the aegis-shared data layer.

    ``statement`` is the SQL of the failed statement when one was running (for logs only:
    it is never part of the message, which may reach places the SQL should not).
    """

    statement: str | None = None

    def __init__(self, message: str, *, orig: BaseException | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.orig = orig

    def __str__(self) -> str:
        return self.message


class ConfigurationError(DatabaseError, ValueError):
    """A setting or constructor argument has a value the library cannot use."""


class DatabaseNotConfiguredError(DatabaseError, RuntimeError):
    """A default :class:`~aegis_shared.database.DatabaseManager` was needed but none is set."""


class DatabaseManagerClosedError(DatabaseError, RuntimeError):
    """The :class:`~aegis_shared.database.DatabaseManager` was closed and cannot be used."""


class UnitOfWorkStateError(DatabaseError, RuntimeError):
    """A unit of work was used outside its ``async with`` block."""


class EntityNotFoundError(DatabaseError, LookupError):
    """No row of the given entity has the given id, or matches the given filters.

    ``EntityNotFoundError("User", 42)`` reads "User with id 42 not found";
    ``EntityNotFoundError("Article", filters={"slug": "how-to-train"})`` reads
    "Article with slug 'how-to-train' not found" (``entity_id`` is then ``None``).
    """

    def __init__(
        self,
        entity: str | type[Any],
        entity_id: Any = None,
        *,
        filters: Mapping[str, Any] | None = None,
    ) -> None:
        name = entity if isinstance(entity, str) else entity.__name__
        self.entity = name
        self.entity_id = entity_id
        self.filters: dict[str, Any] = dict(filters or {})
        if self.filters:
            # Values are quoted short: they often come from a request, and a message
            # should not carry a megabyte back.
            described = " and ".join(
                f"{field} {_short(value)}" for field, value in self.filters.items()
            )
            super().__init__(f"{name} with {described} not found")
        else:
            super().__init__(f"{name} with id {entity_id} not found")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class IntegrityViolationError(DatabaseError):
    """A constraint of the database rejected the write; nothing of the statement was written.

    ``constraint`` is the constraint's name where the driver reports it, ``columns``
    the columns involved where they are known.
    """

    def __init__(
        self,
        message: str,
        *,
        constraint: str | None = None,
        columns: Sequence[str] = (),
        table: str | None = None,
        orig: BaseException | None = None,
    ) -> None:
        super().__init__(message, orig=orig)
        self.constraint = constraint
        self.columns = tuple(columns)
        self.table = table


class DuplicateEntityError(IntegrityViolationError):
    """A unique or primary-key constraint rejected a duplicate value."""


class ForeignKeyViolationError(IntegrityViolationError):
    """A foreign key rejected the write: the referenced row is missing, or still referenced."""


class NotNullViolationError(IntegrityViolationError):
    """A NOT NULL column was given no value."""


class CheckViolationError(IntegrityViolationError):
    """A CHECK constraint rejected the value."""


class InvalidValueError(DatabaseError, ValueError):
    """The database rejected a value it cannot store or compare: a number out of the
    column's range, a string too long for it, text it cannot hold (a NUL character), a
    value of the wrong type. Nothing was written; validate input before it reaches the
    repository (lengths, ranges, types)."""


class DatabaseConnectionError(DatabaseError):
    """The database could not be reached, or the connection broke during the work."""


class DatabaseLoginError(DatabaseConnectionError):
    """The server refused the login itself: a wrong password, a role or database that does
    not exist, access denied. Not transient, so :func:`~aegis_shared.database.with_db_retry`
    never retries it; fix the credentials or the database name in ``DATABASE_URL``."""


class CommitOutcomeUnknownError(DatabaseConnectionError):
    """The connection dropped while COMMIT was in flight: the work may or may not be saved.

    Retrying blindly could apply the work twice, so :func:`~aegis_shared.database.with_db_retry`
    retries this only when the caller declares the work idempotent.
    """


class TransactionConflictError(DatabaseError):
    """Concurrent transactions collided (serialization failure, deadlock, lock wait timeout,
    SQLite busy). Retrying the whole transaction usually succeeds."""


class ConflictRetriesExhaustedError(TransactionConflictError):
    """:func:`~aegis_shared.database.with_db_retry` ran the work more than once and every
    attempt ended in a transaction conflict, the last one included.

    Raised in place of that last :class:`TransactionConflictError` (which is its
    ``__cause__``; ``.orig`` is the same driver error) so that an HTTP layer can tell
    "the server is too contended right now" (503) from a conflict the client caused (409).
    ``attempts`` is how many attempts ran.
    """

    def __init__(self, message: str, *, attempts: int, orig: BaseException | None = None) -> None:
        super().__init__(message, orig=orig)
        self.attempts = attempts


class PoolTimeoutError(DatabaseError):
    """No pooled connection became free within ``pool_timeout`` seconds."""


class QueryTimeoutError(DatabaseError):
    """The statement ran longer than the configured statement timeout and was cancelled."""


class RelationshipNotLoadedError(DatabaseError, AttributeError):
    """An attribute that was not loaded was touched where async code cannot load it lazily.

    Raised instead of SQLAlchemy's ``MissingGreenlet``; the message names the attribute
    and the fix (eager loading with ``selectinload`` or ``await obj.awaitable_attrs.<name>``).
    """


class ReadOnlySessionError(DatabaseError, RuntimeError):
    """A session opened for reading only (``read_only=True``) was asked to write.

    Raised before anything is sent, on whichever server the session reads: a read-only
    session may be on a replica, and the same code must fail the same way on the primary.
    """


__all__ = [
    "CheckViolationError",
    "CommitOutcomeUnknownError",
    "ConfigurationError",
    "ConflictRetriesExhaustedError",
    "DatabaseConnectionError",
    "DatabaseError",
    "DatabaseLoginError",
    "DatabaseManagerClosedError",
    "DatabaseNotConfiguredError",
    "DuplicateEntityError",
    "EntityNotFoundError",
    "ForeignKeyViolationError",
    "IntegrityViolationError",
    "InvalidValueError",
    "NotNullViolationError",
    "PoolTimeoutError",
    "QueryTimeoutError",
    "ReadOnlySessionError",
    "RelationshipNotLoadedError",
    "TransactionConflictError",
    "UnitOfWorkStateError",
]
