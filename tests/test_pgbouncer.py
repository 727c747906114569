"""The manager behind a real pgbouncer in transaction mode (tests/pgbouncer.py): its
pgbouncer mode breaks nothing, and without it the failures it exists for do show.

The repository, unit-of-work, transaction, retry, session-store and events suites also
run through pgbouncer (``[pgbouncer]``, see ``THROUGH_PGBOUNCER`` in tests/conftest.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL

from aegis_shared.config import Settings
from aegis_shared.database import DatabaseManager
from aegis_shared.errors.exceptions import ConfigurationError, DatabaseError, QueryTimeoutError
from aegis_shared.events import EventHub
from tests import pgbouncer
from tests.conftest import MakeDb
from tests.models import UserRepository

pytestmark = pytest.mark.parametrize("backend", ["pgbouncer"], indirect=True)

TASKS = 50
#: What goes wrong behind a transaction pooler when a client keeps session state.
BROKEN = ("prepared statement", "unsupported startup parameter")


async def _workload(db: DatabaseManager, task: int) -> None:
    """Reads on the fast path and in transactions, and writes, through the repository."""
    for step in range(6):
        async with db.session() as session:
            users = UserRepository(session)
            if step % 3 == 0:
                await users.create({"email": f"t{task}-{step}@example.com", "name": f"t{task}"})
            found = await users.list(filters={"name": f"t{task}"}, limit=10)
            assert all(u.name == f"t{task}" for u in found)
            await users.count(filters={"name__startswith": "t"})
        async with db.session() as session:  # a read-only session: the fast path
            await UserRepository(session).get_by_id(1)


async def _run_tasks(db: DatabaseManager) -> list[BaseException]:
    results = await asyncio.gather(
        *(_workload(db, task) for task in range(TASKS)), return_exceptions=True
    )
    return [r for r in results if isinstance(r, BaseException)]


async def test_50_tasks_on_a_pool_larger_than_pgbouncers_give_no_error(make_db: MakeDb) -> None:
    # 50 client connections over 4 server connections, with a statement timeout: each
    # statement may land on another server connection than the one before it.
    db = await make_db(pool_size=25, max_overflow=25, statement_timeout=5)
    assert db.pgbouncer
    errors = await _run_tasks(db)
    assert errors == [], [repr(e) for e in errors[:3]]
    async with db.session() as session:
        assert await UserRepository(session).count() == TASKS * 2
    assert db.pool_status()["main"]["size"] > pgbouncer.DEFAULT_POOL_SIZE


async def test_without_pgbouncer_mode_the_same_work_breaks(make_db: MakeDb, db_url: URL) -> None:
    """A check of the test above: the failures it counts are real ones."""
    await make_db()
    plain = DatabaseManager(db_url, pool_size=25, max_overflow=25)  # prepared statements on
    try:
        errors = await _run_tasks(plain)
    finally:
        await plain.close()
    assert errors and any("prepared statement" in str(e) for e in errors), errors[:3]

    timed = DatabaseManager(db_url, statement_timeout=5)  # as a startup parameter
    try:
        with pytest.raises(DatabaseError, match="unsupported startup parameter"):
            async with timed.session() as session:
                await session.execute(text("SELECT 1"))
    finally:
        await timed.close()


async def test_the_statement_timeout_holds_per_transaction_and_stays_there(
    make_db: MakeDb, db_url: URL
) -> None:
    db = await make_db(statement_timeout=0.3)
    async with db.session() as session:
        shown = await session.scalar(text("SHOW statement_timeout"))
    assert shown == "300ms"
    with pytest.raises(QueryTimeoutError):
        async with db.session() as session:
            await session.execute(text("SELECT pg_sleep(3)"))
    # SET LOCAL ended with its transaction: another client of the same server connections
    # sees the server's default.
    other = DatabaseManager(db_url, pgbouncer=True, pool_size=1)
    try:
        for _ in range(pgbouncer.DEFAULT_POOL_SIZE * 2):
            async with other.session() as session:
                assert await session.scalar(text("SHOW statement_timeout")) == "0"
    finally:
        await other.close()


async def test_session_scoped_work_needs_the_direct_url(
    make_db: MakeDb, db_url: URL, direct_url: URL
) -> None:
    db = await make_db()
    assert db.direct_url == direct_url
    behind = DatabaseManager(db_url, pgbouncer=True)
    try:
        with pytest.raises(ConfigurationError, match="DATABASE_DIRECT_URL"):
            EventHub(behind)
        async with EventHub(db) as hub, hub.subscribe("orders") as events:
            # The LISTEN connection goes to the server itself, not to pgbouncer's port.
            async with asyncio.timeout(10):
                while hub.listener_pid is None:  # noqa: ASYNC110 (a plain attribute)
                    await asyncio.sleep(0.01)
            assert events.channel == "orders"
    finally:
        await behind.close()


def test_pgbouncer_mode_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, db_url: URL, direct_url: URL
) -> None:
    monkeypatch.setenv("DATABASE_URL", db_url.render_as_string(hide_password=False))
    monkeypatch.setenv("DATABASE_PGBOUNCER", "true")
    monkeypatch.setenv("DATABASE_DIRECT_URL", direct_url.render_as_string(hide_password=False))
    db = DatabaseManager.from_settings(Settings())
    assert db.pgbouncer
    assert db.direct_url == direct_url


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"database_url": "sqlite+aiosqlite:///x.db", "pgbouncer": True}, "is for PostgreSQL"),
        ({"pgbouncer": "yes"}, "takes True or False"),
        ({"direct_url": "mysql+asyncmy://root@127.0.0.1/test"}, "must reach the same database"),
    ],
)
def test_bad_pgbouncer_settings_are_refused(
    kwargs: dict[str, Any], message: str, db_url: URL
) -> None:
    values: dict[str, Any] = {"database_url": db_url, **kwargs}
    with pytest.raises(ConfigurationError, match=message):
        DatabaseManager(**values)
