"""``@with_db_retry`` against real failures: unreachable servers, lock conflicts, killed
connections and constraint violations. Nothing is mocked."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import URL

from aegis_shared.database import (
    DatabaseManager,
    configure_database,
    reset_database,
    with_db_retry,
)
from aegis_shared.errors.exceptions import (
    CommitOutcomeUnknownError,
    ConfigurationError,
    DatabaseConnectionError,
    DuplicateEntityError,
    NotNullViolationError,
    TransactionConflictError,
)
from tests.faults import COMMIT_MARKER, FaultProxy, fault_proxy
from tests.models import Account, User, UserRepository

# Nothing listens on port 1: connecting fails at once with "connection refused".
UNREACHABLE = {
    "postgresql": "postgresql+asyncpg://postgres@127.0.0.1:1/x",
    "mariadb": "mysql+asyncmy://root@127.0.0.1:1/x",
}
RETRY_LOGGER = "aegis_shared.database.retry"


async def terminate_backend(db: DatabaseManager, pid: int) -> None:
    """Kill PostgreSQL backend ``pid`` from a background-pool connection and wait until it
    is gone, so the next statement on it is sure to find the connection dead."""
    async with db.background_session() as admin:
        assert await admin.scalar("SELECT pg_terminate_backend(:pid)", {"pid": pid}) is True
    for _ in range(500):
        # A fresh transaction per look: pg_stat_activity is a snapshot within one.
        async with db.background_session() as admin:
            alive = await admin.scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = :pid", {"pid": pid}
            )
        if not alive:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"backend {pid} did not exit")


async def count_users(db: DatabaseManager) -> int:
    async with db.session() as session:
        return int(await session.scalar(select(func.count()).select_from(User)) or 0)


def retry_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == RETRY_LOGGER]


@pytest.fixture
def no_default_database() -> Iterator[None]:
    """Run without a default manager, restoring whatever was configured."""
    previous = reset_database()
    yield
    reset_database()
    if previous is not None:
        configure_database(previous)


@pytest.fixture(params=sorted(UNREACHABLE))
async def unreachable(request: pytest.FixtureRequest) -> AsyncIterator[DatabaseManager]:
    """A manager whose server does not exist."""
    manager = DatabaseManager(UNREACHABLE[request.param])
    yield manager
    await manager.close()


# -- connection failures ---------------------------------------------------------------------


async def test_connection_errors_are_retried_with_a_fresh_session_each_attempt(
    unreachable: DatabaseManager, caplog: pytest.LogCaptureFixture
) -> None:
    sessions: list[Any] = []

    @with_db_retry(max_attempts=4, base_delay=0.001, max_delay=0.01)
    async def read() -> int:
        async with unreachable.session() as session:
            sessions.append(session)
            return int(await session.scalar("SELECT 1"))

    caplog.set_level(logging.WARNING, logger=RETRY_LOGGER)
    with pytest.raises(DatabaseConnectionError) as caught:
        await read()

    assert len(sessions) == 4
    assert len({id(session) for session in sessions}) == 4, "each attempt opens its own session"
    error = caught.value
    assert not isinstance(error, CommitOutcomeUnknownError)
    assert isinstance(error.__cause__, BaseException), "chained to the driver's failure"
    assert error.orig is not None
    # One warning per retry (none after the last attempt), naming the attempt and the error.
    records = retry_records(caplog)
    assert len(records) == 3
    for number, record in enumerate(records, start=1):
        message = record.getMessage()
        assert record.levelno == logging.WARNING
        assert "read" in message
        assert f"attempt {number}" in message
        assert "DatabaseConnectionError" in message
    assert unreachable.pool_status()["main"]["checked_out"] == 0


async def test_unreachable_server_raises_connection_error_without_retry_decorator(
    unreachable: DatabaseManager,
) -> None:
    with pytest.raises(DatabaseConnectionError) as caught:
        async with unreachable.session() as session:
            await session.execute("SELECT 1")
    assert caught.value.__cause__ is not None
    assert await unreachable.health_check() is False


async def test_a_failed_sqlite_connect_leaves_no_driver_thread_behind(tmp_path: Any) -> None:
    """aiosqlite stops its worker thread without waiting when a connect fails; a thread
    still running when the event loop closes dies with "Event loop is closed"."""

    def driver_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if "_connection_worker_thread" in t.name}

    manager = DatabaseManager(f"sqlite+aiosqlite:///{tmp_path}/missing-dir/app.db")
    before = driver_threads()
    try:
        for _ in range(5):
            with pytest.raises(DatabaseConnectionError):
                async with manager.session() as session:
                    await session.execute("SELECT 1")
            assert driver_threads() - before == set()
    finally:
        await manager.close()


@pytest.mark.parametrize("unreachable", ["postgresql"], indirect=True)
async def test_bare_decorator_defaults_wait_long_enough_for_a_restart(
    no_default_database: None, unreachable: DatabaseManager, caplog: pytest.LogCaptureFixture
) -> None:
    """Without a default manager: 6 attempts, and the waits between them (as logged)
    add up to 2.5-5 s, so a 1-2 s restart is ridden out (tests/test_faults.py rides one)."""
    attempts = 0

    @with_db_retry
    async def read() -> None:
        nonlocal attempts
        attempts += 1
        async with unreachable.session() as session:
            await session.execute("SELECT 1")

    caplog.set_level(logging.WARNING, logger=RETRY_LOGGER)
    with pytest.raises(DatabaseConnectionError):
        await read()
    assert attempts == 6
    waits = [float(r.getMessage().rsplit(" ", 1)[-1].rstrip("s")) for r in retry_records(caplog)]
    assert len(waits) == 5
    # Each wait is half to all of 0.2 * 2 ** n, capped at 2 s.
    for number, wait in enumerate(waits):
        ceiling = min(2.0, 0.2 * 2**number)
        assert ceiling / 2 - 0.01 <= wait <= ceiling + 0.01
    assert 2.5 - 0.05 <= sum(waits) <= 5.0 + 0.05


@pytest.mark.parametrize("unreachable", ["postgresql"], indirect=True)
async def test_the_deadline_stops_attempts_before_they_run_out(
    no_default_database: None, unreachable: DatabaseManager
) -> None:
    attempts = 0

    @with_db_retry(max_attempts=50, deadline=0.5, base_delay=0.1, max_delay=0.1)
    async def read() -> None:
        nonlocal attempts
        attempts += 1
        async with unreachable.session() as session:
            await session.execute("SELECT 1")

    with pytest.raises(DatabaseConnectionError):
        await read()
    # Waits of 0.05-0.1 s: at most about ten fit in half a second, and at least five.
    assert 5 <= attempts <= 12


async def test_bare_decorator_takes_attempts_from_the_default_manager(
    no_default_database: None, unreachable: DatabaseManager
) -> None:
    configure_database(DatabaseManager(unreachable.url, retry_attempts=2, retry_backoff=1.5))
    attempts = 0

    @with_db_retry
    async def read() -> None:
        nonlocal attempts
        attempts += 1
        async with unreachable.session() as session:
            await session.execute("SELECT 1")

    try:
        with pytest.raises(DatabaseConnectionError):
            await read()
    finally:
        manager = reset_database()
        assert manager is not None
        await manager.close()
    assert attempts == 2


async def test_configured_decorator_retries_then_raises(
    no_default_database: None, unreachable: DatabaseManager
) -> None:
    attempts = 0

    @with_db_retry(max_attempts=3, backoff_factor=2)
    async def read() -> None:
        nonlocal attempts
        attempts += 1
        async with unreachable.session() as session:
            await session.execute("SELECT 1")

    with pytest.raises(DatabaseConnectionError):
        await read()
    assert attempts == 3


# -- success, arguments, metadata ---------------------------------------------------------------


async def test_decorated_function_passes_arguments_and_returns_the_result(
    db: DatabaseManager, caplog: pytest.LogCaptureFixture
) -> None:
    @with_db_retry(max_attempts=3, backoff_factor=2)
    async def create_user_with_retry(user_data: dict[str, str]) -> User:
        """Create a user."""
        async with db.session() as session:
            return await UserRepository(session).create(User(**user_data))

    caplog.set_level(logging.WARNING, logger=RETRY_LOGGER)
    created = await create_user_with_retry({"email": "a@example.com", "name": "A"})
    assert created.id is not None
    assert created.email == "a@example.com"
    assert create_user_with_retry.__name__ == "create_user_with_retry"
    assert create_user_with_retry.__doc__ == "Create a user."
    assert await count_users(db) == 1
    assert retry_records(caplog) == []


# -- transaction conflicts --------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"], indirect=True)
async def test_lock_conflict_is_retried_on_a_new_transaction(
    db: DatabaseManager, caplog: pytest.LogCaptureFixture
) -> None:
    async with db.session() as session:
        session.add(Account(id=1, balance=100))
    attempts = 0
    caplog.set_level(logging.WARNING, logger=RETRY_LOGGER)

    async with db.engine.connect() as blocker:
        # Another transaction holds the row lock.
        await blocker.execute(select(Account).where(Account.id == 1).with_for_update())

        @with_db_retry(max_attempts=3, base_delay=0.001, max_delay=0.01)
        async def deposit(amount: int) -> int:
            nonlocal attempts
            attempts += 1
            async with db.session() as session:
                locked = select(Account).where(Account.id == 1).with_for_update(nowait=True)
                try:
                    account = (await session.scalars(locked)).one()
                except TransactionConflictError:
                    await blocker.rollback()  # the other transaction ends; a retry can lock
                    raise
                account.balance += amount
                return account.balance

        assert await deposit(5) == 105

    assert attempts == 2
    records = retry_records(caplog)
    assert len(records) == 1
    assert "TransactionConflictError" in records[0].getMessage()
    async with db.session() as session:
        account = await session.get(Account, 1)
        assert account is not None
        assert account.balance == 105


# -- failures that must not be retried ---------------------------------------------------------


async def test_duplicate_is_not_retried(
    db: DatabaseManager, caplog: pytest.LogCaptureFixture
) -> None:
    attempts = 0

    @with_db_retry(max_attempts=5, base_delay=0.001, max_delay=0.01)
    async def create(email: str) -> None:
        nonlocal attempts
        attempts += 1
        async with db.session() as session:
            await UserRepository(session).create(User(email=email, name="x"))

    await create("a@example.com")
    attempts = 0
    caplog.set_level(logging.WARNING, logger=RETRY_LOGGER)
    with pytest.raises(DuplicateEntityError):
        await create("a@example.com")
    assert attempts == 1
    assert retry_records(caplog) == []
    assert await count_users(db) == 1


async def test_not_null_violation_is_not_retried(
    db: DatabaseManager, caplog: pytest.LogCaptureFixture
) -> None:
    attempts = 0

    @with_db_retry(max_attempts=5, base_delay=0.001, max_delay=0.01)
    async def create() -> None:
        nonlocal attempts
        attempts += 1
        async with db.session() as session:
            await UserRepository(session).create(User(email="a@example.com", name=None))

    caplog.set_level(logging.WARNING, logger=RETRY_LOGGER)
    with pytest.raises(NotNullViolationError):
        await create()
    assert attempts == 1
    assert retry_records(caplog) == []
    assert await count_users(db) == 0


async def test_application_errors_are_not_retried(db: DatabaseManager) -> None:
    attempts = 0

    @with_db_retry(max_attempts=5, base_delay=0.001, max_delay=0.01)
    async def fail() -> None:
        nonlocal attempts
        attempts += 1
        async with db.session() as session:
            await UserRepository(session).create(User(email="a@example.com", name="a"))
            raise KeyError("not a database problem")

    with pytest.raises(KeyError):
        await fail()
    assert attempts == 1
    assert await count_users(db) == 0


# -- a COMMIT whose outcome is unknown ---------------------------------------------------------


def user_creator(manager: DatabaseManager, before_commit: Any = None) -> Any:
    """An operation that inserts a user in ``manager.session()``; ``before_commit(session,
    attempt)`` runs just before the block ends (and commits)."""
    state = {"attempts": 0}

    async def create_user() -> int:
        state["attempts"] += 1
        async with manager.session() as session:
            created = await UserRepository(session).create(
                User(email=f"try{state['attempts']}@example.com", name="once")
            )
            if before_commit is not None:
                await before_commit(session, state["attempts"])
        return created.id

    create_user.state = state  # type: ignore[attr-defined]
    return create_user


@pytest.fixture
async def proxied(
    db: DatabaseManager, db_url: URL
) -> AsyncIterator[tuple[DatabaseManager, FaultProxy]]:
    """A manager whose connections go through a :class:`FaultProxy` (tables from ``db``)."""
    async with fault_proxy(db_url) as proxy:
        manager = DatabaseManager(proxy.url(db_url), pool_size=2, command_timeout=2)
        try:
            yield manager, proxy
        finally:
            await manager.close()


def lose_commit_reply(proxy: FaultProxy, on: set[int]) -> Any:
    async def arm(session: Any, attempt: int) -> None:
        if attempt in on:
            proxy.lose_reply_to(COMMIT_MARKER[session.bind.dialect.name])

    return arm


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"], indirect=True)
async def test_lost_commit_reply_is_not_retried_by_default(
    db: DatabaseManager,
    proxied: tuple[DatabaseManager, FaultProxy],
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager, proxy = proxied
    operation = user_creator(manager, lose_commit_reply(proxy, on={1}))
    caplog.set_level(logging.WARNING, logger=RETRY_LOGGER)
    with pytest.raises(CommitOutcomeUnknownError) as caught:
        await with_db_retry(max_attempts=3, base_delay=0.001, max_delay=0.01)(operation)()
    assert proxy.replies_lost == 1
    assert operation.state["attempts"] == 1
    assert retry_records(caplog) == []
    assert caught.value.orig is not None, "chained to the driver's failure"
    # The server did get the COMMIT: the user is saved, once, though the caller was told
    # the outcome is unknown (never "failed").
    assert await count_users(db) == 1
    assert manager.pool_status()["main"]["checked_out"] == 0


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_lost_commit_reply_is_retried_when_idempotent(
    db: DatabaseManager,
    proxied: tuple[DatabaseManager, FaultProxy],
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager, proxy = proxied
    seen: list[int] = []

    async def upsert_once(session: Any, attempt: int) -> None:
        seen.append(attempt)
        if attempt == 1:
            proxy.lose_reply_to(COMMIT_MARKER["postgresql"])

    state = {"attempts": 0}

    @with_db_retry(max_attempts=3, idempotent=True, base_delay=0.001, max_delay=0.01)
    async def create_if_missing() -> None:
        # Idempotent: repeating it after a COMMIT that did land changes nothing.
        state["attempts"] += 1
        async with manager.session() as session:
            if not await UserRepository(session).exists(filters={"email": "once@example.com"}):
                await UserRepository(session).create(User(email="once@example.com", name="x"))
            await upsert_once(session, state["attempts"])

    caplog.set_level(logging.WARNING, logger=RETRY_LOGGER)
    await create_if_missing()
    assert state["attempts"] == 2
    records = retry_records(caplog)
    assert len(records) == 1
    assert "CommitOutcomeUnknownError" in records[0].getMessage()
    assert await count_users(db) == 1


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_lost_commit_reply_on_every_attempt_raises_after_the_last(
    db: DatabaseManager, proxied: tuple[DatabaseManager, FaultProxy]
) -> None:
    manager, proxy = proxied
    operation = user_creator(manager, lose_commit_reply(proxy, on={1, 2}))
    with pytest.raises(CommitOutcomeUnknownError):
        await with_db_retry(max_attempts=2, idempotent=True, base_delay=0.001, max_delay=0.01)(
            operation
        )()
    assert operation.state["attempts"] == 2
    assert proxy.replies_lost == 2
    assert await count_users(db) == 2  # both COMMITs landed: why the default never retries


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_commit_on_a_connection_already_closed_is_known_unsaved_and_retried(
    db: DatabaseManager,
) -> None:
    """The backend is killed before COMMIT: the driver refuses to send it on a closed link,
    so nothing can have been saved, and the retry (without idempotent=True) is safe."""

    async def kill(session: Any, attempt: int) -> None:
        if attempt == 1:
            pid = await session.scalar("SELECT pg_backend_pid()")
            await terminate_backend(db, pid)

    operation = user_creator(db, kill)
    await with_db_retry(max_attempts=3, base_delay=0.001, max_delay=0.01)(operation)()
    assert operation.state["attempts"] == 2
    assert await count_users(db) == 1


# -- misuse ---------------------------------------------------------------------------------------


def test_rejects_functions_that_are_not_async() -> None:
    def plain() -> None:
        pass

    async def agen() -> AsyncIterator[int]:
        yield 1

    with pytest.raises(TypeError, match="async"):
        with_db_retry(plain)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="async"):
        with_db_retry(max_attempts=3)(plain)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="async"):
        with_db_retry(agen)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"max_attempts": 2.5},
        {"max_attempts": True},
        {"backoff_factor": 0.5},
        {"base_delay": -1},
        {"base_delay": 2, "max_delay": 1},
        {"deadline": 0},
        {"deadline": -1},
    ],
)
def test_rejects_invalid_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        with_db_retry(**kwargs)
