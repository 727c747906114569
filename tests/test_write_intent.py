"""Units of work that declare they will write: ``UnitOfWork(write=True)``,
``db.session(write=True)`` and ``declare_write(session)`` for a request's session.

On SQLite a transaction that reads first begins deferred, and its later write fails at
once when another connection holds the write lock (busy_timeout does not cover that lock
upgrade). A declared writer begins with ``BEGIN IMMEDIATE`` and so queues for the lock.
The lock is observed from outside, by a second plain ``sqlite3`` connection that must not
wait; contention uses real connections, one per task. Without the declaration nothing
changes. On PostgreSQL and MariaDB a declared writer behaves like any unit of work,
except that its reads run inside its transaction.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from aegis_shared.database import (
    BackgroundUnitOfWork,
    DatabaseManager,
    declare_write,
    get_session,
    with_db_retry,
)
from aegis_shared.errors.exceptions import TransactionConflictError, UnitOfWorkStateError
from aegis_shared.testing import count_queries
from aegis_shared.web import DatabaseSessionMiddleware, install_error_handlers
from tests.conftest import MakeDb
from tests.models import Account, AccountRepository, AppUnitOfWork

WRITERS = 12
SessionDep = Depends(get_session)


class BackgroundAccounts(BackgroundUnitOfWork):
    accounts: AccountRepository


async def seed_counter(db: DatabaseManager) -> None:
    async with db.session() as session:
        session.add(Account(id=1, balance=0))


async def counter_value(db: DatabaseManager) -> int:
    async with db.session() as session:
        account = await AccountRepository(session).get_one(1)
        return account.balance


@contextmanager
def outside_connection(db: DatabaseManager) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection to the same file that never waits for a lock."""
    connection = sqlite3.connect(str(db.url.database), timeout=0, isolation_level=None)
    try:
        yield connection
    finally:
        connection.close()


def write_lock_is_free(db: DatabaseManager) -> bool:
    """True when another connection can take SQLite's write lock right now."""
    with outside_connection(db) as other:
        try:
            other.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            assert "locked" in str(exc)
            return False
        other.execute("ROLLBACK")
        return True


# -- SQLite: what the declaration changes ----------------------------------------------------

sqlite_only = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


@sqlite_only
async def test_a_writer_holds_the_write_lock_from_its_first_read(db: DatabaseManager) -> None:
    await seed_counter(db)
    async with AppUnitOfWork(write=True) as uow:
        assert write_lock_is_free(db)  # nothing sent yet
        account = await uow.accounts.get_one(1)
        assert uow.session.in_transaction()  # read inside the transaction, not fast
        assert not write_lock_is_free(db)
        account.balance += 1
        await uow.commit()
        assert write_lock_is_free(db)
        # The next transaction of the same unit of work is a writer again. (get_one(1)
        # would send nothing: the session still holds that row.)
        assert await uow.accounts.count() == 1
        assert not write_lock_is_free(db)
        account.balance += 1
        await uow.commit()
    assert await counter_value(db) == 2


@sqlite_only
async def test_without_the_declaration_a_read_takes_no_lock(db: DatabaseManager) -> None:
    await seed_counter(db)
    async with AppUnitOfWork() as uow:
        account = await uow.accounts.get_one(1)
        assert not uow.session.in_transaction()  # a fast read, outside any transaction
        assert write_lock_is_free(db)
        await uow.session.execute("SELECT balance FROM accounts")  # a deferred BEGIN
        assert uow.session.in_transaction()
        assert write_lock_is_free(db)
        account.balance += 1
        await uow.flush()  # the write takes the lock only now
        assert not write_lock_is_free(db)
        await uow.commit()
    assert await counter_value(db) == 1


@sqlite_only
@pytest.mark.parametrize("source", ["db.session", "db.background_session", "BackgroundUnitOfWork"])
async def test_every_standalone_session_takes_write(db: DatabaseManager, source: str) -> None:
    await seed_counter(db)

    @asynccontextmanager
    async def open_writer() -> AsyncIterator[AsyncSession]:
        if source == "BackgroundUnitOfWork":
            async with BackgroundAccounts(write=True) as uow:
                yield uow.session
                await uow.commit()
        else:
            opener = db.session if source == "db.session" else db.background_session
            async with opener(write=True) as session:
                yield session

    async with open_writer() as session:
        account = await AccountRepository(session).get_one(1)
        assert not write_lock_is_free(db)
        account.balance += 5
    assert write_lock_is_free(db)
    assert await counter_value(db) == 5


@sqlite_only
async def test_twelve_concurrent_read_then_write_units_of_work_all_succeed(
    make_db: MakeDb,
) -> None:
    db = await make_db(pool_size=WRITERS, max_overflow=0)
    await seed_counter(db)
    everyone_inside = asyncio.Barrier(WRITERS)
    attempts: Counter[int] = Counter()
    connections_in_use: list[int] = []

    @with_db_retry  # the default retries; none should be needed
    async def increment(n: int) -> None:
        attempts[n] += 1
        async with AppUnitOfWork(write=True) as uow:
            await everyone_inside.wait()  # all start their transactions at once
            account = await uow.accounts.get_one(1)
            connections_in_use.append(db.pool_status()["main"]["checked_out"])
            await asyncio.sleep(0)  # let the others run between the read and the write
            account.balance += 1
            await uow.commit()

    async with asyncio.timeout(60):
        outcomes = await asyncio.gather(
            *(increment(n) for n in range(WRITERS)), return_exceptions=True
        )

    assert outcomes == [None] * WRITERS, [o for o in outcomes if o is not None]
    assert await counter_value(db) == WRITERS, "every increment applied once"
    assert sum(attempts.values()) == WRITERS, "no attempt failed, so none was retried"
    # Real contention: while one held the lock, others held their own connections waiting.
    assert max(connections_in_use) > 1
    assert db.pool_status()["main"]["checked_out"] == 0


@sqlite_only
async def test_without_the_declaration_concurrent_read_then_write_conflicts(
    make_db: MakeDb,
) -> None:
    """The default is unchanged: read-then-write units of work whose reads overlap meet
    TransactionConflictError; the increments that did commit are all there."""
    db = await make_db(pool_size=WRITERS, max_overflow=0)
    await seed_counter(db)
    everyone_has_read = asyncio.Barrier(WRITERS)

    async def increment() -> None:
        async with AppUnitOfWork() as uow:
            account = await uow.accounts.get_one(1)
            await everyone_has_read.wait()
            account.balance += 1
            await uow.commit()

    async with asyncio.timeout(60):
        outcomes = await asyncio.gather(
            *(increment() for _ in range(WRITERS)), return_exceptions=True
        )

    conflicts = [o for o in outcomes if isinstance(o, TransactionConflictError)]
    succeeded = outcomes.count(None)
    assert conflicts, "overlapping deferred transactions conflict"
    assert succeeded + len(conflicts) == WRITERS, outcomes
    assert await counter_value(db) == succeeded


# -- a request's session ---------------------------------------------------------------------


def counter_app(*, write: bool) -> FastAPI:
    """``POST /increment`` reads the counter and writes it back on the request's session."""
    app = FastAPI()
    app.add_middleware(DatabaseSessionMiddleware)
    install_error_handlers(app)

    @app.post("/increment")
    async def increment(session: AsyncSession = SessionDep) -> dict[str, int]:
        if write:
            declare_write(session)
        account = await AccountRepository(session).get_one(1)
        await asyncio.sleep(0)
        account.balance += 1
        return {"balance": account.balance}

    return app


@sqlite_only
async def test_twelve_concurrent_requests_that_declare_a_write_all_succeed(
    make_db: MakeDb,
) -> None:
    db = await make_db(pool_size=WRITERS, max_overflow=0)
    await seed_counter(db)
    transport = httpx.ASGITransport(app=counter_app(write=True))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        async with asyncio.timeout(60):
            responses = await asyncio.gather(*(client.post("/increment") for _ in range(WRITERS)))
    assert [r.status_code for r in responses] == [200] * WRITERS
    assert sorted(r.json()["balance"] for r in responses) == list(range(1, WRITERS + 1))
    assert await counter_value(db) == WRITERS


# -- every backend ---------------------------------------------------------------------------


async def test_a_writer_reads_inside_its_transaction_and_commits(db: DatabaseManager) -> None:
    await seed_counter(db)
    async with AppUnitOfWork(write=True) as uow:
        with count_queries(db) as counter:
            account = await uow.accounts.get_one(1)
        assert counter.count == 1
        assert uow.session.in_transaction()
        account.balance += 3
        await uow.commit()
    assert await counter_value(db) == 3


async def test_a_writer_that_fails_rolls_back(db: DatabaseManager) -> None:
    await seed_counter(db)
    with pytest.raises(RuntimeError, match="boom"):
        async with AppUnitOfWork(write=True) as uow:
            account = await uow.accounts.get_one(1)
            account.balance += 1
            await uow.flush()
            raise RuntimeError("boom")
    assert await counter_value(db) == 0


async def test_declaring_a_write_after_the_transaction_began_is_refused(
    db: DatabaseManager,
) -> None:
    await seed_counter(db)
    async with db.session() as session:
        await session.execute("SELECT 1")
        with pytest.raises(UnitOfWorkStateError, match="before the first statement"):
            declare_write(session)
        # The session itself is unharmed and commits its work.
        account = await AccountRepository(session).get_one(1)
        account.balance += 1
    assert await counter_value(db) == 1


async def test_a_declared_session_skips_the_fast_path(db: DatabaseManager) -> None:
    await seed_counter(db)
    outcomes: dict[bool, Any] = {}
    for write in (False, True):
        async with db.session(write=write) as session:
            await AccountRepository(session).get_one(1)
            outcomes[write] = session.in_transaction()
    # The file databases here read fast outside a transaction unless declared writers.
    assert outcomes == {False: False, True: True}
