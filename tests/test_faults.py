"""Faults on real servers: lost COMMIT replies, cancellations, stalls, refused and killed
connections, restarts. Outages are made with a loopback proxy of the test's own
(tests/faults.py) and ``pg_terminate_backend`` / ``KILL`` on the test's own connections;
the shared servers are never stopped.

Time bounds here are generous ceilings that tell "returned" from "hung", never speed
measurements.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.engine import URL

from aegis_shared.database import DatabaseManager, UnitOfWork, with_db_retry
from aegis_shared.errors.exceptions import (
    CommitOutcomeUnknownError,
    DatabaseConnectionError,
    DatabaseLoginError,
    TransactionConflictError,
)
from tests.conftest import MakeDb
from tests.faults import COMMIT_MARKER, FaultProxy, fault_proxy, mysql_error, pg_error
from tests.models import Account, User, UserRepository

NETWORK = ("postgresql", "mariadb")
network = pytest.mark.parametrize("backend", NETWORK, indirect=True)
postgres_only = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
FAST_RETRY = {"base_delay": 0.001, "max_delay": 0.01}


@pytest.fixture
async def proxy(db: DatabaseManager, db_url: URL) -> AsyncIterator[FaultProxy]:
    """A proxy in front of this run's database (its tables made by ``db``)."""
    async with fault_proxy(db_url) as started:
        yield started


@pytest.fixture
async def through(proxy: FaultProxy, db_url: URL) -> AsyncIterator[Callable[..., DatabaseManager]]:
    """Factory of managers whose connections go through ``proxy``; closed afterwards."""
    made: list[DatabaseManager] = []

    def make(**kwargs: Any) -> DatabaseManager:
        kwargs.setdefault("pool_size", 2)
        kwargs.setdefault("command_timeout", 2)
        manager = DatabaseManager(proxy.url(db_url), **kwargs)
        made.append(manager)
        return manager

    yield make
    proxy.resume()
    for manager in made:
        await manager.close()


def connects(manager: DatabaseManager) -> Callable[[], int]:
    """How many connections ``manager``'s main pool opens from now on."""
    opened: list[int] = []
    event.listen(manager.engine.sync_engine, "connect", lambda *_: opened.append(1))
    return lambda: len(opened)


async def server_pid(session: Any, backend: str) -> int:
    sql = "SELECT pg_backend_pid()" if backend == "postgresql" else "SELECT CONNECTION_ID()"
    return int(await session.scalar(sql))


async def kill(db: DatabaseManager, backend: str, pid: int) -> None:
    """End server process ``pid`` (from ``db``'s background pool) and wait until it is gone."""
    sql = f"SELECT pg_terminate_backend({pid})" if backend == "postgresql" else f"KILL {pid}"
    look = (
        f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"
        if backend == "postgresql"
        else f"SELECT count(*) FROM information_schema.processlist WHERE id = {pid}"
    )
    async with db.background_engine.connect() as conn:
        await conn.execute(text(sql))
    for _ in range(300):
        async with db.background_engine.connect() as conn:
            if not await conn.scalar(text(look)):
                await asyncio.sleep(0.05)  # and let the client see the socket close
                return
        await asyncio.sleep(0.01)
    raise AssertionError(f"server process {pid} did not end")


async def users_named(db: DatabaseManager, name: str) -> int:
    async with db.session() as session:
        return int(
            await session.scalar(select(func.count()).select_from(User).where(User.name == name))
            or 0
        )


# -- 1. a lost COMMIT reply, whatever API committed ------------------------------------------


class _Uow(UnitOfWork):
    users: UserRepository


async def _commit_with_session_begin(db: DatabaseManager, name: str) -> None:
    session = db.session_factory()
    try:
        async with session.begin():
            session.add(User(email=f"{name}@x.io", name=name))
    finally:
        await session.close()


async def _commit_with_engine_begin(db: DatabaseManager, name: str) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(User.__table__.insert().values(email=f"{name}@x.io", name=name))


async def _commit_with_connection_commit(db: DatabaseManager, name: str) -> None:
    async with db.engine.connect() as conn:
        await conn.execute(User.__table__.insert().values(email=f"{name}@x.io", name=name))
        await conn.commit()


async def _commit_with_manager_session(db: DatabaseManager, name: str) -> None:
    async with db.session() as session:
        session.add(User(email=f"{name}@x.io", name=name))


async def _commit_with_unit_of_work(db: DatabaseManager, name: str) -> None:
    async with _Uow(db) as uow:
        await uow.users.create({"email": f"{name}@x.io", "name": name})
        await uow.commit()


COMMIT_STYLES = {
    "session.begin": _commit_with_session_begin,
    "engine.begin": _commit_with_engine_begin,
    "conn.commit": _commit_with_connection_commit,
    "db.session": _commit_with_manager_session,
    "UnitOfWork.commit": _commit_with_unit_of_work,
}


@network
@pytest.mark.parametrize("style", sorted(COMMIT_STYLES))
@pytest.mark.parametrize("then_close", [True, False], ids=["reset", "stalled"])
async def test_a_lost_commit_reply_is_outcome_unknown_in_every_style_and_never_retried(
    db: DatabaseManager,
    proxy: FaultProxy,
    through: Callable[..., DatabaseManager],
    backend: str,
    style: str,
    then_close: bool,
) -> None:
    manager = through(command_timeout=1)
    commit = COMMIT_STYLES[style]
    attempts = 0

    @with_db_retry(max_attempts=4, **FAST_RETRY)
    async def transfer() -> None:
        nonlocal attempts
        attempts += 1
        proxy.lose_reply_to(COMMIT_MARKER[backend], then_close=then_close)
        await commit(manager, style)

    with pytest.raises(CommitOutcomeUnknownError) as caught:
        await transfer()
    assert attempts == 1, "a COMMIT that may have landed is never repeated by default"
    assert proxy.replies_lost == 1
    assert "may or may not have been saved" in str(caught.value)
    if not then_close:
        assert "DATABASE_COMMAND_TIMEOUT" in str(caught.value)
    # It did land, once.
    assert await users_named(db, style) == 1
    assert manager.pool_status()["main"]["checked_out"] == 0
    # The connection that lost its reply was dropped; the pool still serves.
    async with manager.session() as session:
        assert await session.scalar("SELECT 1") == 1


# -- 2. cancellation --------------------------------------------------------------------------


@network
@pytest.mark.parametrize("path", ["orm", "fast"])
async def test_a_cancelled_call_on_a_stalled_server_raises_cancellation_promptly(
    db: DatabaseManager,
    proxy: FaultProxy,
    through: Callable[..., DatabaseManager],
    path: str,
) -> None:
    manager = through(command_timeout=30)
    async with manager.session() as session:  # warm: one pooled connection
        await UserRepository(session).create({"email": "c@x.io", "name": "c"})
    opened = connects(manager)
    attempts = 0

    @with_db_retry(**FAST_RETRY)
    async def read() -> Any:
        nonlocal attempts
        attempts += 1
        async with manager.session() as session:
            if path == "fast":
                return await UserRepository(session).get_by_id(1)
            return await session.scalar(select(User).where(User.id == 1))

    proxy.stall()
    started = time.monotonic()
    with pytest.raises(TimeoutError) as caught:
        async with asyncio.timeout(0.3):
            await read()
    elapsed = time.monotonic() - started
    assert not isinstance(caught.value, DatabaseConnectionError)
    assert isinstance(caught.value.__cause__ or caught.value.__context__, asyncio.CancelledError)
    assert attempts == 1, "a cancellation is never retried"
    assert elapsed < 1.5, f"cancellation took {elapsed:.2f}s"
    assert manager.pool_status()["main"]["checked_out"] == 0
    proxy.resume()
    assert await read() is not None
    # The connection left in an unknown state was dropped, not reused: a new one served.
    assert opened() == 1


@network
async def test_cancellation_is_not_translated_without_a_stall(
    db: DatabaseManager, backend: str
) -> None:
    """A task cancelled inside a slow statement gets CancelledError, and the pool is clean."""
    sleep = "SELECT pg_sleep(5)" if backend == "postgresql" else "SELECT SLEEP(5)"

    async def slow() -> None:
        async with db.session() as session:
            await session.execute(sleep)

    task = asyncio.ensure_future(slow())
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert db.pool_status()["main"]["checked_out"] == 0
    async with db.session() as session:
        assert await session.scalar("SELECT 1") == 1


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_write_cancelled_mid_statement_on_sqlite_ends_cleanly(
    db: DatabaseManager, caplog: pytest.LogCaptureFixture
) -> None:
    """A task cancelled while its write transaction's statement runs in aiosqlite's thread:
    the connection is dropped, its rollback raises nothing, and the write lock is free
    for the next writer."""
    caplog.set_level(logging.DEBUG, "aegis_shared.database")
    started = asyncio.Event()

    async def writer() -> None:
        async with db.session() as session:
            await session.execute(text("UPDATE users SET name = name"))  # takes the lock
            started.set()
            while True:  # the cancellation lands inside one of these statements
                await session.execute(text("SELECT count(*) FROM users"))

    task = asyncio.ensure_future(writer())
    await started.wait()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert db.pool_status()["main"]["checked_out"] == 0
    async with asyncio.timeout(5), db.session() as session:  # well within the busy timeout
        session.add(User(email="after@example.com", name="After"))
    assert not [m for m in caplog.messages if "also failed" in m]


# -- 3. refused connections on the fast path and the ORM path ---------------------------------


REFUSALS = {
    "postgresql": {
        "starting up": pg_error("57P03", "the database system is starting up"),
        "shutting down": pg_error("57P03", "the database system is shutting down"),
        "too many clients": pg_error("53300", "sorry, too many clients already"),
    },
    "mariadb": {
        "too many connections": mysql_error(1040, "08004", "Too many connections"),
        "shutting down": mysql_error(1053, "08S01", "Server shutdown in progress"),
    },
}


@network
@pytest.mark.parametrize("path", ["fast", "orm"])
async def test_a_server_refusing_connections_is_a_retried_connection_error(
    db: DatabaseManager,
    proxy: FaultProxy,
    through: Callable[..., DatabaseManager],
    backend: str,
    path: str,
) -> None:
    async with db.session() as session:
        await UserRepository(session).create({"email": "r@x.io", "name": "r"})
    for why, reply in REFUSALS[backend].items():
        manager = through(fast_path=path == "fast")
        proxy.reject_with(reply)
        attempts = 0

        @with_db_retry(max_attempts=3, **FAST_RETRY)
        async def read(manager: DatabaseManager = manager) -> Any:
            nonlocal attempts
            attempts += 1
            if attempts == 3:
                proxy.reject_with(None)  # the server is back
            async with manager.session() as session:
                return await UserRepository(session).get_by_id(1)

        with pytest.raises(DatabaseConnectionError) as caught:
            async with manager.session() as session:
                await UserRepository(session).get_by_id(1)
        assert not isinstance(caught.value, DatabaseLoginError), why
        assert why.split()[-1] in str(caught.value).lower(), str(caught.value)
        found = await read()
        assert found is not None and attempts == 3, why


@postgres_only
async def test_too_many_connections_for_a_role_is_a_connection_error(
    db: DatabaseManager, db_url: URL, make_db: MakeDb
) -> None:
    """A real refusal by the server: a role limited to one connection."""
    role = f"aegis_limited_{random.randrange(10**6)}"
    async with db.engine.connect() as conn:
        await conn.execute(text(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 1'))
        await conn.execute(text(f'GRANT ALL ON TABLE users TO "{role}"'))
        await conn.commit()
    limited = DatabaseManager(db_url.set(username=role), pool_size=1, max_overflow=1)
    try:
        async with limited.session() as first:
            await first.execute("SELECT 1")  # holds the one connection allowed
            with pytest.raises(DatabaseConnectionError, match="too many connections") as caught:
                async with limited.session() as second:
                    await UserRepository(second).get_by_id(1)
            assert not isinstance(caught.value, DatabaseLoginError)
    finally:
        await limited.close()
        async with db.engine.connect() as conn:
            await conn.execute(text(f'REVOKE ALL ON TABLE users FROM "{role}"'))
            await conn.execute(text(f'DROP ROLE "{role}"'))
            await conn.commit()


# -- 4. COPY on a killed connection ------------------------------------------------------------


@postgres_only
async def test_copy_on_a_killed_connection_is_a_connection_error_and_the_pool_recovers(
    db: DatabaseManager,
) -> None:
    with pytest.raises(DatabaseConnectionError):
        async with db.session() as session:
            await session.execute("SELECT 1")
            await kill(db, "postgresql", await server_pid(session, "postgresql"))
            await UserRepository(session).create_many(
                [{"email": f"k{i}@x.io", "name": "k"} for i in range(10)], returning=False
            )
    assert db.pool_status()["main"]["checked_out"] == 0
    # The next unrelated unit of work gets a live connection.
    async with db.session() as session:
        assert await UserRepository(session).count() == 0


@postgres_only
async def test_copy_whose_backend_is_killed_mid_stream_fails_instead_of_hanging(
    db: DatabaseManager,
) -> None:
    """The backend is killed while the client is still streaming rows: asyncpg alone
    waits for ever for its socket to drain (3 of 3 tries). The kill comes from a thread
    of its own, since the COPY keeps this event loop busy."""
    rows = [{"email": f"m{i}@x.io", "name": "m" * 90} for i in range(2_000_000)]
    admin_url = db.url.set(drivername="postgresql")

    def killer(pid: int) -> None:
        async def run() -> None:
            conn = await asyncpg.connect(admin_url.render_as_string(hide_password=False))
            try:
                for _ in range(1000):
                    copying = await conn.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 "
                        "AND query LIKE 'COPY%'",
                        pid,
                    )
                    if copying:
                        await asyncio.sleep(0.2)
                        await conn.execute("SELECT pg_terminate_backend($1)", pid)
                        return
                    await asyncio.sleep(0.01)
            finally:
                await conn.close()

        asyncio.run(run())

    async with asyncio.timeout(60):  # a hang fails the test instead of the run
        with pytest.raises(DatabaseConnectionError):
            async with db.session() as session:
                thread = threading.Thread(
                    target=killer, args=(await server_pid(session, "postgresql"),)
                )
                thread.start()
                await UserRepository(session).create_many(rows, returning=False)
    await asyncio.to_thread(thread.join)
    assert db.pool_status()["main"]["checked_out"] == 0
    async with db.session() as session:
        assert await UserRepository(session).count() == 0


# -- 5. stalls are bounded ------------------------------------------------------------------------


@network
async def test_a_stall_is_bounded_by_the_command_timeout_and_named(
    db: DatabaseManager, proxy: FaultProxy, through: Callable[..., DatabaseManager]
) -> None:
    manager = through(command_timeout=0.5)
    async with manager.session() as session:
        await session.execute("SELECT 1")
    proxy.stall()
    started = time.monotonic()
    with pytest.raises(DatabaseConnectionError, match="DATABASE_COMMAND_TIMEOUT") as caught:
        async with manager.session() as session:
            await session.execute("SELECT 1")
    assert time.monotonic() - started < 3, "one timeout, not two"
    assert "0.5s" in str(caught.value)
    assert manager.pool_status()["main"]["checked_out"] == 0


@network
@pytest.mark.parametrize("read", ["get_by_id", "list", "count"])
async def test_a_stalled_fast_read_is_bounded_by_the_command_timeout_and_named(
    db: DatabaseManager,
    proxy: FaultProxy,
    through: Callable[..., DatabaseManager],
    read: str,
) -> None:
    # The fast path talks to the driver directly, outside SQLAlchemy's execution: a stall
    # there ends in the same named error as on the ORM path, the connection is dropped
    # and the pool serves on.
    async with db.session() as session:
        await UserRepository(session).create({"email": "f@x.io", "name": "f"})
        await session.commit()
    manager = through(command_timeout=0.5)

    async def run() -> Any:
        async with manager.session() as session:
            repository = UserRepository(session)
            if read == "get_by_id":
                return await repository.get_by_id(1)
            if read == "list":
                return await repository.list(filters={"name": "f"})
            return await repository.count(filters={"name": "f"})

    assert await run()  # warm: one pooled connection, the plan compiled
    opened = connects(manager)
    proxy.stall()
    started = time.monotonic()
    with pytest.raises(DatabaseConnectionError, match="DATABASE_COMMAND_TIMEOUT") as caught:
        await run()
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 3, f"gave up after {elapsed:.2f}s"
    assert "0.5s" in str(caught.value)
    assert manager.pool_status()["main"]["checked_out"] == 0
    proxy.resume()
    assert await run()
    assert opened() == 1, "the timed-out connection was replaced, not reused"


@network
async def test_a_connect_to_a_stalled_server_is_bounded_and_named(
    db: DatabaseManager, proxy: FaultProxy, through: Callable[..., DatabaseManager]
) -> None:
    manager = through(connect_timeout=0.5)
    proxy.stall()
    started = time.monotonic()
    for fast in (True, False):
        with pytest.raises(DatabaseConnectionError, match="DATABASE_CONNECT_TIMEOUT"):
            async with manager.session() as session:
                if fast:
                    await UserRepository(session).get_by_id(1)
                else:
                    await session.execute("SELECT 1")
    assert time.monotonic() - started < 5


@network
async def test_close_is_bounded_on_a_stalled_network(
    db: DatabaseManager, proxy: FaultProxy, through: Callable[..., DatabaseManager]
) -> None:
    manager = through(pool_size=4)

    async def hold() -> None:
        async with manager.session() as session:
            await session.execute("SELECT 1")
            await asyncio.sleep(0.1)

    await asyncio.gather(*(hold() for _ in range(4)))
    assert manager.pool_status()["main"]["checked_in"] == 4
    proxy.stall()
    started = time.monotonic()
    await asyncio.wait_for(manager.close(), 10)
    assert time.monotonic() - started < 3


def test_default_timeouts_bound_a_stall() -> None:
    plain = DatabaseManager("postgresql+asyncpg://u@127.0.0.1/db")
    assert plain.connect_timeout == 10
    assert plain.command_timeout == 60
    slow = DatabaseManager("postgresql+asyncpg://u@127.0.0.1/db", statement_timeout=30)
    assert slow.command_timeout == 35
    with pytest.raises(Exception, match="longer than statement_timeout"):
        DatabaseManager(
            "postgresql+asyncpg://u@127.0.0.1/db", statement_timeout=30, command_timeout=10
        )


# -- 6. the caller's server settings merge with ours ---------------------------------------------


@postgres_only
async def test_server_settings_merge_with_the_librarys(db_url: URL, db: DatabaseManager) -> None:
    manager = DatabaseManager(
        db_url,
        statement_timeout=7,
        connect_args={"server_settings": {"search_path": "public", "work_mem": "8MB"}},
    )
    try:
        async with manager.session() as session:
            assert await session.scalar("SHOW statement_timeout") == "7s"
            assert await session.scalar("SHOW application_name") == "aegis-shared"
            assert await session.scalar("SHOW work_mem") == "8MB"
        named = DatabaseManager(
            db_url, connect_args={"server_settings": {"application_name": "billing"}}
        )
        try:
            async with named.session() as session:
                assert await session.scalar("SHOW application_name") == "billing"
        finally:
            await named.close()
    finally:
        await manager.close()


# -- 7. retries ride out a restart; permanent errors are not retried ------------------------------


@network
async def test_default_retries_ride_out_a_restart_of_a_second_and_a_half(
    db: DatabaseManager, proxy: FaultProxy, through: Callable[..., DatabaseManager]
) -> None:
    manager = through()
    async with manager.session() as session:
        await UserRepository(session).create({"email": "up@x.io", "name": "up"})
    attempts = 0

    @with_db_retry  # library defaults
    async def read() -> Any:
        nonlocal attempts
        attempts += 1
        async with manager.session() as session:
            return await UserRepository(session).get_one(1)

    async def restart() -> None:
        await asyncio.sleep(1.5)
        await proxy.start()

    proxy.drop_all()
    await proxy.refuse()
    back = asyncio.ensure_future(restart())
    found = await read()
    await back
    assert found.email == "up@x.io"
    assert attempts > 1


PERMANENT = {
    "postgresql": [
        ("database", "no such database"),
        ("username", "role does not exist"),
    ],
    "mariadb": [
        ("database", "Unknown database"),
        ("username", "Access denied"),
    ],
}


@network
async def test_a_refused_login_is_not_retried_and_not_called_transient(
    db: DatabaseManager, db_url: URL, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    for part, _ in PERMANENT[backend]:
        manager = DatabaseManager(db_url.set(**{part: "aegis_no_such_thing"}))
        attempts = 0

        @with_db_retry(max_attempts=5, **FAST_RETRY)
        async def read(manager: DatabaseManager = manager) -> None:
            nonlocal attempts
            attempts += 1
            async with manager.session() as session:
                await session.execute("SELECT 1")

        try:
            with pytest.raises(DatabaseLoginError) as caught:
                await read()
        finally:
            await manager.close()
        assert attempts == 1, part
        message = str(caught.value)
        assert "transient" not in message.replace("not transient", "")
        assert "DATABASE_URL" in message
        assert "aegis_no_such_thing" in message


# -- 8. one killed backend costs one reconnect ------------------------------------------------


@network
async def test_one_killed_connection_costs_one_reconnect_and_a_restart_refreshes_all(
    db: DatabaseManager,
    proxy: FaultProxy,
    through: Callable[..., DatabaseManager],
    backend: str,
) -> None:
    manager = through(pool_size=5, max_overflow=0)
    gate = asyncio.Event()
    pids: list[int] = []

    async def hold() -> None:
        async with manager.session() as session:
            pids.append(await server_pid(session, backend))
            await gate.wait()

    holders = [asyncio.ensure_future(hold()) for _ in range(5)]
    while len(pids) < 5:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(*holders)
    opened = connects(manager)

    # A backend killed in the middle of a unit of work: that unit fails, one reconnect.
    with pytest.raises(DatabaseConnectionError):
        async with manager.session() as session:
            pid = await server_pid(session, backend)
            await kill(db, backend, pid)
            await session.execute("SELECT 1")

    async def work() -> None:
        async with manager.session() as session:
            await session.execute("SELECT 1")
            await UserRepository(session).get_by_id(1)

    for _ in range(4):
        await asyncio.gather(*(work() for _ in range(5)))
    assert opened() == 1

    # An idle one killed: replaced at check-out, nobody sees an error.
    async with manager.session() as session:
        victim = await server_pid(session, backend)
    await kill(db, backend, victim)
    for _ in range(4):
        await asyncio.gather(*(work() for _ in range(5)))
    assert opened() == 2

    # A restart: every connection is gone, each is replaced as it is next used.
    proxy.drop_all()
    await asyncio.sleep(0.2)
    await asyncio.gather(*(work() for _ in range(5)))
    assert opened() == 7


# -- 9. no noise under bursts ------------------------------------------------------------------


@network
async def test_overflow_and_kills_make_no_log_noise(
    db: DatabaseManager, make_db: MakeDb, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    manager = await make_db(default=False, pool_size=1, max_overflow=4)
    async with manager.session() as session:
        await UserRepository(session).create({"email": "n@x.io", "name": "n"})
    caplog.set_level(logging.DEBUG)

    async def read() -> None:
        async with manager.session() as session:
            assert await UserRepository(session).get_by_id(1) is not None

    for _ in range(10):
        await asyncio.gather(*(read() for _ in range(5)))

    async def doomed() -> None:
        async with manager.session() as session:
            await kill(db, backend, await server_pid(session, backend))
            await session.execute("SELECT 1")

    for _ in range(3):
        with pytest.raises(DatabaseConnectionError):
            await doomed()
    gc.collect()
    await asyncio.sleep(0.1)
    noisy = [
        r
        for r in caplog.records
        if r.levelno >= logging.WARNING
        and r.name.startswith(("sqlalchemy", "asyncio", "asyncpg", "asyncmy"))
        and "ignored for PRIMARY key" not in r.getMessage()
    ]
    assert noisy == [], [r.getMessage() for r in noisy]
    assert manager.pool_status()["main"]["overflow"] == 0


# -- the whole: transfers under chaos ---------------------------------------------------------


@postgres_only
async def test_transfers_under_chaos_conserve_money_and_apply_each_ack_once(
    db: DatabaseManager, proxy: FaultProxy, through: Callable[..., DatabaseManager]
) -> None:
    """8 workers, 200 transfers through @with_db_retry while backends are killed at random
    and COMMIT replies are lost now and then: the total is conserved, every acknowledged
    transfer is applied exactly once, and an unknown outcome is reported as such."""
    manager = through(pool_size=4, max_overflow=4, command_timeout=2)
    accounts = 10
    async with db.session() as session:
        for i in range(accounts):
            session.add(Account(id=i, balance=1000))
    acknowledged: list[tuple[int, int, int]] = []
    unknown = 0
    stop = asyncio.Event()

    @with_db_retry(base_delay=0.01, max_delay=0.2)
    async def transfer(source: int, target: int, amount: int) -> None:
        async with manager.session() as session:
            a = await session.get(Account, source, with_for_update=True)
            b = await session.get(Account, target, with_for_update=True)
            assert a is not None and b is not None
            a.balance -= amount
            b.balance += amount
            await session.flush()

    async def worker(seed: int) -> None:
        nonlocal unknown
        rng = random.Random(seed)
        for _ in range(25):
            source, target = sorted(rng.sample(range(accounts), 2))
            try:
                await transfer(source, target, 1)
                acknowledged.append((source, target, 1))
            except CommitOutcomeUnknownError:
                unknown += 1
            except TransactionConflictError:
                pass

    async def chaos() -> None:
        rng = random.Random(7)
        while not stop.is_set():
            await asyncio.sleep(rng.uniform(0.05, 0.2))
            if rng.random() < 0.2:
                proxy.lose_reply_to(COMMIT_MARKER["postgresql"])
                continue
            async with db.background_engine.connect() as conn:
                await conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = 'aegis-shared' AND pid <> pg_backend_pid() "
                        "AND datname = current_database() AND state <> 'idle' "
                        "ORDER BY random() LIMIT 1"
                    )
                )

    noise = asyncio.ensure_future(chaos())
    try:
        async with asyncio.timeout(120):
            await asyncio.gather(*(worker(seed) for seed in range(8)))
    finally:
        stop.set()
        await noise
    async with db.session() as session:
        balances = dict((await session.execute(select(Account.id, Account.balance))).all())
    assert sum(balances.values()) == accounts * 1000
    # Every acknowledged transfer moved 1 from the lower id to the higher; unknown ones
    # may or may not have. The balances must be explained by exactly that.
    moved = dict.fromkeys(range(accounts), 0)
    for source, target, amount in acknowledged:
        moved[source] -= amount
        moved[target] += amount
    drift = sum(abs(balances[i] - 1000 - moved[i]) for i in range(accounts))
    assert drift <= 2 * unknown, (drift, unknown)
    assert len(acknowledged) + unknown > 100
