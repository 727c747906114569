"""One migration at a time per database: a lock held around ``alembic upgrade``.

Two deploys that start at once would otherwise both read "not at head" from
``alembic_version`` and both run the same migration; the second then fails half-way (a
table that exists already) or, worse, applies a data migration twice. So whoever
migrates first takes a lock that outlives transactions, and the other waits for it, up
to a bounded number of seconds, before it even reads ``alembic_version``:

* PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``, tried every
  :data:`POLL_INTERVAL` seconds until the bound) on a connection of its own to the direct
  URL. Session-level, so it cannot be taken through pgbouncer in transaction mode, where
  the session would be another client's after the next transaction: hence the direct URL.
* MariaDB: ``GET_LOCK(name, timeout)``, a named lock of the server (named after the
  database, since its names are server-wide).
* SQLite: an exclusive ``flock`` on a file next to the database (``<database>.migrate-lock``),
  polled until the bound: SQLite has no lock that outlives a transaction, and every process
  that can open the database file can open the lock file beside it. An in-memory database
  belongs to one process and needs no lock.

The lock is released when the block ends, and by the server (or the kernel) when the
holder dies: a killed deploy never leaves it behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

from sqlalchemy import text
from sqlalchemy.engine import URL

from aegis_shared.database.manager import DatabaseManager
from aegis_shared.database.urls import is_sqlite_memory, normalize_url
from aegis_shared.errors.exceptions import DatabaseError

try:  # POSIX only; elsewhere SQLite migrations are not serialised (see _sqlite_lock)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: The PostgreSQL advisory lock key of migrations: the first 8 bytes of a SHA-256, so it
#: collides with no application's small integer keys. Advisory locks are per database.
MIGRATION_LOCK_KEY: Final = int.from_bytes(
    hashlib.sha256(b"aegis_shared.migrations").digest()[:8], "big", signed=True
)
#: Seconds between two attempts to take the PostgreSQL or SQLite lock.
POLL_INTERVAL: Final = 0.2
#: Default bound on the wait for another migration, in seconds.
DEFAULT_LOCK_TIMEOUT: Final = 60.0


class MigrationLockTimeoutError(DatabaseError):
    """Another process held the migration lock for longer than the wait allowed."""


def _timed_out(timeout: float, how: str) -> MigrationLockTimeoutError:
    return MigrationLockTimeoutError(
        f"another migration has held the migration lock ({how}) for more than {timeout:g} s; "
        "wait for it to finish and run the command again, or raise --lock-timeout"
    )


def mariadb_lock_name(url: URL) -> str:
    """The ``GET_LOCK`` name for migrations of ``url``'s database (at most 64 characters)."""
    return f"aegis_migrate:{url.database or ''}"[:64]


def sqlite_lock_path(url: URL) -> Path:
    """The file whose ``flock`` serialises migrations of a SQLite database file."""
    return Path(f"{url.database}.migrate-lock")


@contextlib.asynccontextmanager
async def _postgresql_lock(db: DatabaseManager, wait: float) -> AsyncIterator[None]:
    async with db.engine.connect() as conn:
        deadline = time.monotonic() + wait
        while True:
            taken = await conn.scalar(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
            # Each attempt is its own statement: end its transaction, so that waiting
            # holds no snapshot (and no transaction pgbouncer or VACUUM would mind).
            await conn.commit()
            if taken:
                break
            if time.monotonic() >= deadline:
                raise _timed_out(wait, f"PostgreSQL advisory lock {MIGRATION_LOCK_KEY}")
            await asyncio.sleep(POLL_INTERVAL)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # a broken link releases it anyway
                await conn.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
                await conn.commit()


@contextlib.asynccontextmanager
async def _mariadb_lock(db: DatabaseManager, wait: float) -> AsyncIterator[None]:
    name = mariadb_lock_name(db.url)
    async with db.engine.connect() as conn:
        taken = await conn.scalar(
            text("SELECT GET_LOCK(:name, :timeout)"), {"name": name, "timeout": wait}
        )
        await conn.commit()
        if taken != 1:
            raise _timed_out(wait, f"MariaDB GET_LOCK {name!r}")
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                await conn.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": name})
                await conn.commit()


@contextlib.asynccontextmanager
async def _sqlite_lock(url: URL, wait: float) -> AsyncIterator[None]:
    if is_sqlite_memory(url) or fcntl is None:
        yield
        return
    path = sqlite_lock_path(url)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise _timed_out(wait, f"the file {path.name}") from None
                await asyncio.sleep(POLL_INTERVAL)
        try:
            yield
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


@contextlib.asynccontextmanager
async def migration_lock(
    url: str | URL, *, wait: float = DEFAULT_LOCK_TIMEOUT, connect_timeout: float = 10.0
) -> AsyncIterator[None]:
    """Hold the migration lock of ``url``'s database for the block (see the module doc).

    ``url`` should reach the server directly, not through a transaction pooler. Raises
    :class:`MigrationLockTimeoutError` when another holder keeps it past ``wait``
    seconds, and the library's connection errors when the server cannot be reached.
    """
    if wait < 0:
        raise ValueError(f"wait must be >= 0 seconds, got {wait!r}")
    parsed = normalize_url(url, "the migration lock's URL")
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        async with _sqlite_lock(parsed, wait):
            yield
        return
    options: dict[str, Any] = {
        "pool_size": 1,
        "max_overflow": 0,
        "background_pool_size": 1,
        "connect_timeout": connect_timeout,
        "retry_attempts": 1,
        "fast_path": False,
    }
    if backend == "mysql":
        # GET_LOCK waits on the server: the client must wait a little longer for it.
        options["command_timeout"] = wait + 10.0
    db = DatabaseManager(parsed, **options)
    try:
        lock = _postgresql_lock if backend == "postgresql" else _mariadb_lock
        async with lock(db, wait):
            yield
    finally:
        await db.close()


__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "MIGRATION_LOCK_KEY",
    "POLL_INTERVAL",
    "MigrationLockTimeoutError",
    "mariadb_lock_name",
    "migration_lock",
    "sqlite_lock_path",
]
