"""Concurrent sessions on real servers: serialization conflicts, killed connections, pool
exhaustion, the background pool, deadlocks and SQLite writers.

Every test is bounded by ``asyncio.timeout`` so a hang fails instead of stalling the run;
assertions are on outcomes and counts, never on elapsed time.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import asynccontextmanager
from typing import Any

import pytest
from sqlalchemy import func, select

from aegis_shared.database import (
    BackgroundUnitOfWork,
    DatabaseManager,
    get_background_session,
    with_db_retry,
)
from aegis_shared.errors.exceptions import (
    DatabaseConnectionError,
    PoolTimeoutError,
    TransactionConflictError,
)
from tests.models import Account, AppUnitOfWork, User, UserAccessLog, UserRepository
from tests.test_retry import terminate_backend

MakeDb = Any


async def seed_accounts(db: DatabaseManager, balances: dict[int, int]) -> None:
    async with db.session() as session:
        session.add_all(Account(id=i, balance=b) for i, b in balances.items())


async def balances(db: DatabaseManager) -> dict[int, int]:
    async with db.session() as session:
        rows = (await session.scalars(select(Account).order_by(Account.id))).all()
        return {account.id: account.balance for account in rows}


class BackgroundUsers(BackgroundUnitOfWork):
    users: UserRepository


# -- PostgreSQL: SERIALIZABLE read-modify-write ----------------------------------------------


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_serializable_transfers_are_retried_and_conserve_the_total(
    make_db: MakeDb,
) -> None:
    tasks = 20
    db = await make_db(
        pool_size=tasks, max_overflow=0, engine_kwargs={"isolation_level": "SERIALIZABLE"}
    )
    await seed_accounts(db, dict.fromkeys(range(1, 6), 1000))
    transfers = [(n, n % 5 + 1, (n % 5 + 1 + n % 4) % 5 + 1, n + 1) for n in range(tasks)]
    expected = dict.fromkeys(range(1, 6), 1000)
    for _, source, target, amount in transfers:
        assert source != target
        expected[source] -= amount
        expected[target] += amount

    # Every first attempt reads both balances before any transaction writes, so the
    # read-modify-write transactions overlap and SERIALIZABLE must reject some of them.
    everyone_has_read = asyncio.Barrier(tasks)
    attempts: Counter[int] = Counter()
    conflicts: list[TransactionConflictError] = []

    @with_db_retry(max_attempts=60, base_delay=0.005, max_delay=0.2)
    async def transfer(n: int, source: int, target: int, amount: int) -> None:
        attempts[n] += 1
        try:
            async with AppUnitOfWork() as uow:
                src = await uow.accounts.get_one(source)
                dst = await uow.accounts.get_one(target)
                if attempts[n] == 1:
                    await everyone_has_read.wait()
                src.balance -= amount
                dst.balance += amount
                await uow.commit()
        except TransactionConflictError as exc:
            conflicts.append(exc)
            raise

    async with asyncio.timeout(60):
        await asyncio.gather(*(transfer(*t) for t in transfers))

    final = await balances(db)
    assert sum(final.values()) == 5 * 1000
    assert final == expected, "every transfer applied exactly once"
    assert conflicts, "the overlapping transactions produced serialization failures"
    # Every failed attempt was a conflict, and each was retried.
    assert sum(attempts.values()) == tasks + len(conflicts)
    assert db.pool_status()["main"]["checked_out"] == 0


# -- PostgreSQL: a connection killed under an open unit of work --------------------------------


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_killed_connection_fails_the_unit_of_work_and_leaves_a_healthy_pool(
    make_db: MakeDb,
) -> None:
    pool_size = 2
    db = await make_db(pool_size=pool_size, max_overflow=0)
    killed: list[int] = []

    async with asyncio.timeout(60):
        with pytest.raises(DatabaseConnectionError) as caught:
            async with AppUnitOfWork() as uow:
                await uow.users.create(User(email="lost@example.com", name="lost"))
                pid = await uow.session.scalar("SELECT pg_backend_pid()")
                await terminate_backend(db, pid)
                killed.append(pid)
                await uow.session.execute("SELECT 1")
                await uow.commit()
        assert caught.value.__cause__ is not None
        assert db.pool_status()["main"]["checked_out"] == 0

        attempts = 0

        @with_db_retry(max_attempts=3, base_delay=0.001, max_delay=0.05)
        async def create_user() -> int:
            nonlocal attempts
            attempts += 1
            async with AppUnitOfWork() as uow:
                await uow.users.create(User(email="saved@example.com", name="saved"))
                pid = await uow.session.scalar("SELECT pg_backend_pid()")
                if attempts == 1:
                    await terminate_backend(db, pid)
                    killed.append(pid)
                    await uow.session.execute("SELECT 1")  # fails: a retryable error
                await uow.commit()
                return int(pid)

        saved_on = await create_user()
        assert attempts == 2
        assert saved_on not in killed

        async with db.session() as session:
            emails = (await session.scalars(select(User.email))).all()
        assert emails == ["saved@example.com"], "nothing of the failed unit of work persisted"

        # No broken connection is left in the pool: sessions one after another, and as
        # many at once as the pool holds, all work on live backends.
        for _ in range(pool_size * 2):
            async with db.session() as session:
                assert await session.scalar("SELECT pg_backend_pid()") not in killed

        both_open = asyncio.Barrier(pool_size)

        async def hold() -> int:
            async with db.session() as session:
                pid = int(await session.scalar("SELECT pg_backend_pid()"))
                await both_open.wait()
                return pid

        pids = await asyncio.gather(*(hold() for _ in range(pool_size)))
        assert len(set(pids)) == pool_size
        assert not set(pids) & set(killed)
    status = db.pool_status()["main"]
    assert status["checked_out"] == 0
    assert status["checked_in"] == pool_size


# -- PostgreSQL: a small pool under load -----------------------------------------------------


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_exhausted_pool_times_out_cleanly_and_never_hangs(make_db: MakeDb) -> None:
    db = await make_db(pool_size=2, max_overflow=0, pool_timeout=1)

    async def hold_briefly(n: int) -> int:
        async with db.session() as session:
            await session.execute("SELECT pg_sleep(0.2)")
            return n

    async with asyncio.timeout(60):
        outcomes = await asyncio.gather(
            *(hold_briefly(n) for n in range(50)), return_exceptions=True
        )

    succeeded = [o for o in outcomes if isinstance(o, int)]
    timed_out = [o for o in outcomes if isinstance(o, PoolTimeoutError)]
    others = [o for o in outcomes if not isinstance(o, (int, PoolTimeoutError))]
    assert others == []
    assert succeeded and timed_out
    assert len(succeeded) + len(timed_out) == 50
    assert all(isinstance(error.orig, Exception) for error in timed_out)
    status = db.pool_status()["main"]
    assert status["checked_out"] == 0
    assert status["overflow"] == 0
    async with db.session() as session:
        assert await session.scalar("SELECT 1") == 1


# -- the background pool ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["postgresql", "mariadb", "sqlite"], indirect=True)
async def test_background_pool_works_while_the_main_pool_is_exhausted(make_db: MakeDb) -> None:
    db = await make_db(pool_size=1, max_overflow=0, pool_timeout=0.2)
    holding = asyncio.Event()
    release = asyncio.Event()

    async def hold_the_only_main_connection() -> None:
        async with db.session() as session:
            await session.execute("SELECT 1")
            holding.set()
            await release.wait()

    async with asyncio.timeout(60):
        holder = asyncio.create_task(hold_the_only_main_connection())
        try:
            await holding.wait()
            assert db.pool_status()["main"]["checked_out"] == 1
            with pytest.raises(PoolTimeoutError):
                async with AppUnitOfWork() as uow:
                    await uow.session.execute("SELECT 1")

            async with BackgroundUsers() as background_uow:
                await background_uow.users.create(User(email="uow@example.com", name="uow"))
                await background_uow.commit()

            background_session = asynccontextmanager(get_background_session)
            async with background_session() as session:
                await UserRepository(session).create(User(email="dep@example.com", name="dep"))
                await session.commit()

            async with db.background_session() as session:
                assert await session.scalar(select(func.count()).select_from(User)) == 2
        finally:
            release.set()
            await holder
    assert db.pool_status()["main"]["checked_out"] == 0
    assert db.pool_status()["background"]["checked_out"] == 0


# -- MariaDB: a real deadlock -----------------------------------------------------------------


def deadlocking_transfers(db: DatabaseManager, *, retry: bool) -> tuple[Any, Any, list[Any]]:
    """Two transfers that lock accounts 1 and 2 in opposite order; on their first attempt
    each waits until the other holds its first lock, which closes a lock cycle."""
    first_locked = {1: asyncio.Event(), 2: asyncio.Event()}
    attempts: Counter[int] = Counter()
    conflicts: list[TransactionConflictError] = []

    async def transfer(first: int, second: int, amount: int) -> None:
        attempts[first] += 1
        try:
            async with AppUnitOfWork() as uow:
                locked = select(Account).with_for_update()
                source = (await uow.session.scalars(locked.where(Account.id == first))).one()
                if attempts[first] == 1:
                    first_locked[first].set()
                    await first_locked[second].wait()
                target = (await uow.session.scalars(locked.where(Account.id == second))).one()
                source.balance -= amount
                target.balance += amount
                await uow.commit()
        except TransactionConflictError as exc:
            conflicts.append(exc)
            raise

    run = (
        with_db_retry(max_attempts=5, base_delay=0.001, max_delay=0.05)(transfer)
        if retry
        else transfer
    )
    return run, attempts, conflicts


@pytest.mark.parametrize("backend", ["mariadb"], indirect=True)
async def test_deadlock_is_raised_as_transaction_conflict(db: DatabaseManager) -> None:
    await seed_accounts(db, {1: 1000, 2: 1000})
    transfer, attempts, conflicts = deadlocking_transfers(db, retry=False)
    async with asyncio.timeout(60):
        outcomes = await asyncio.gather(
            transfer(1, 2, 10), transfer(2, 1, 5), return_exceptions=True
        )
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(errors) == 1, outcomes
    (error,) = errors
    assert isinstance(error, TransactionConflictError)
    assert error.__cause__ is not None
    assert "1213" in str(error) or "deadlock" in str(error).lower()
    assert conflicts == [error]
    # The victim was rolled back whole; the winner's transfer alone is applied.
    winner_moved = {1: (990, 1010), 2: (1005, 995)}
    loser = 1 if outcomes[0] is error else 2
    winner = 3 - loser
    after = await balances(db)
    assert (after[1], after[2]) == winner_moved[winner]
    assert dict(attempts) == {1: 1, 2: 1}


@pytest.mark.parametrize("backend", ["mariadb"], indirect=True)
async def test_deadlock_victim_is_retried_to_success(db: DatabaseManager) -> None:
    await seed_accounts(db, {1: 1000, 2: 1000})
    transfer, attempts, conflicts = deadlocking_transfers(db, retry=True)
    async with asyncio.timeout(60):
        await asyncio.gather(transfer(1, 2, 10), transfer(2, 1, 5))
    assert len(conflicts) == 1
    assert sorted(attempts.values()) == [1, 2], "only the victim ran again"
    assert await balances(db) == {1: 1000 - 10 + 5, 2: 1000 + 10 - 5}


# -- SQLite: concurrent writers --------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_sqlite_concurrent_writers_all_succeed(make_db: MakeDb) -> None:
    writers, rows_each = 10, 5
    db = await make_db(pool_size=writers, max_overflow=0)

    async def write(writer: int) -> int:
        async with db.session() as session:
            for row in range(rows_each):
                session.add(UserAccessLog(user_id=writer, path=f"/w{writer}/r{row}"))
                await session.flush()
                await asyncio.sleep(0)  # let the other writers run in between
        return writer

    async with asyncio.timeout(60):
        outcomes = await asyncio.gather(*(write(w) for w in range(writers)), return_exceptions=True)

    assert outcomes == list(range(writers)), [o for o in outcomes if isinstance(o, BaseException)]
    async with db.session() as session:
        result = await session.execute(
            select(UserAccessLog.user_id, func.count()).group_by(UserAccessLog.user_id)
        )
        per_writer = dict(result.all())
    assert per_writer == dict.fromkeys(range(writers), rows_each)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_sqlite_read_then_write_conflicts_are_retried(make_db: MakeDb) -> None:
    """Writers that read first start deferred transactions; when another writer got there
    first they meet SQLite's busy error as TransactionConflictError, and a retry succeeds."""
    writers = 10
    db = await make_db(pool_size=writers, max_overflow=0)
    await seed_accounts(db, {1: 0})
    conflicts: list[TransactionConflictError] = []
    everyone_has_read = asyncio.Barrier(writers)
    attempts: Counter[int] = Counter()

    @with_db_retry(max_attempts=30, base_delay=0.005, max_delay=0.1)
    async def increment(n: int) -> None:
        attempts[n] += 1
        try:
            async with db.session() as session:
                account = await session.get(Account, 1)
                assert account is not None
                if attempts[n] == 1:
                    await everyone_has_read.wait()
                account.balance += 1
        except TransactionConflictError as exc:
            conflicts.append(exc)
            raise

    async with asyncio.timeout(60):
        await asyncio.gather(*(increment(n) for n in range(writers)))
    assert await balances(db) == {1: writers}, "no increment was lost"
    assert conflicts, "the writers that read a stale snapshot met a conflict"
    assert sum(attempts.values()) == writers + len(conflicts)
