"""Real databases for the suite: SQLite always, PostgreSQL and MariaDB when reachable.

Each run creates its own PostgreSQL and MariaDB databases (``aegis_t_<random>``) and drops
them at the end; a test gets fresh tables. Under ``CI=true`` an unreachable server fails
the run instead of skipping. Override the servers with ``AEGIS_TEST_POSTGRES_URL`` and
``AEGIS_TEST_MARIADB_URL``.

The modules of :data:`THROUGH_PGBOUNCER` run their backend tests a fourth time, as
``[pgbouncer]``: on the same PostgreSQL database through a real pgbouncer in transaction
mode (tests/pgbouncer.py), with the manager in its pgbouncer mode and the server itself as
its direct URL; ``backend`` is then ``"postgresql"``, as the dialect is.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, NoReturn

import pytest
from sqlalchemy import MetaData, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from aegis_shared.database import DatabaseManager, configure_database, reset_database
from aegis_shared.events import event_metadata, wakeups
from tests import pgbouncer, replication
from tests.models import Base

pytest_plugins = ("pytester",)

POSTGRES_ADMIN = os.environ.get(
    "AEGIS_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
MARIADB_ADMIN = os.environ.get("AEGIS_TEST_MARIADB_URL", "mysql+asyncmy://root@127.0.0.1:3306/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
BACKENDS = ("sqlite", "postgresql", "mariadb")
#: Test modules that also run through pgbouncer in transaction mode (issue 13).
THROUGH_PGBOUNCER = frozenset(
    {
        "test_repository",
        "test_repository_writes",
        "test_lookups",
        "test_uow_wraps_session",
        "test_savepoints",
        "test_transactions",
        "test_retry",
        "test_sessions_store",
        "test_sessions_sweeper",
        "test_events_log",
        "test_events_hub",
        "test_events_sse",
        "test_events_retention",
        "test_pgbouncer",
    }
)


async def _create_database(admin: str) -> tuple[URL | None, str]:
    url = make_url(admin)
    name = f"aegis_t_{secrets.token_hex(4)}"
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with asyncio.timeout(10):
            async with engine.connect() as conn:
                if url.get_backend_name() == "postgresql":
                    await conn.execute(text(f'CREATE DATABASE "{name}"'))
                else:
                    await conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    except Exception as exc:  # unreachable server: reported once by the caller
        return None, f"{type(exc).__name__}: {exc}"
    finally:
        await engine.dispose()
    return url.set(database=name), ""


async def _drop_database(admin: str, url: URL) -> None:
    engine = create_async_engine(make_url(admin), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            if url.get_backend_name() == "postgresql":
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
            else:
                await conn.execute(text(f"DROP DATABASE IF EXISTS `{url.database}`"))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def server_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, URL | str]]:
    """The database URL of each backend for this run, or why it is unavailable."""
    urls: dict[str, URL | str] = {
        "sqlite": make_url(f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('sqlite')}/test.db")
    }
    admins = {"postgresql": POSTGRES_ADMIN, "mariadb": MARIADB_ADMIN}
    for backend, admin in admins.items():
        url, why = asyncio.run(_create_database(admin))
        urls[backend] = url if url is not None else why
    with contextlib.ExitStack() as stack:
        postgresql = urls["postgresql"]
        if not isinstance(postgresql, URL):
            urls["pgbouncer"] = f"it needs PostgreSQL, which is not reachable ({postgresql})"
        elif pgbouncer.binary() is None:
            urls["pgbouncer"] = f"pgbouncer is not installed; {pgbouncer.INSTALL_HINT}"
        else:
            urls["pgbouncer"] = stack.enter_context(pgbouncer.running(postgresql))
        yield urls
    for backend, admin in admins.items():
        url = urls[backend]
        if isinstance(url, URL):
            asyncio.run(_drop_database(admin, url))


@pytest.fixture(scope="session")
def replication_pair() -> Iterator[replication.Pair]:
    """A primary and a streaming standby of the suite's own (tests/replication.py), made
    once per test process that asks for it and removed at the end."""
    if replication.bindir() is None:
        _unavailable("a primary and standby", f"initdb not found; {replication.INSTALL_HINT}")
    with replication.primary_and_standby() as pair:
        yield pair


def _unavailable(what: str, why: str) -> NoReturn:
    message = f"{what} is not available ({why})"
    if IN_CI:
        pytest.fail(f"{message}; CI=true requires it", pytrace=False)
    pytest.skip(message)


def _url_for(server_urls: dict[str, URL | str], backend: str) -> URL:
    url = server_urls[backend]
    if isinstance(url, URL):
        return url
    _unavailable(backend, url)


def _chooses_its_backends(metafunc: pytest.Metafunc) -> bool:
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        if isinstance(names, str):
            names = [name.strip() for name in names.split(",")]
        if "backend" in names:
            return True
    return False


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that takes ``backend`` runs on each backend (and, in the modules of
    THROUGH_PGBOUNCER, through pgbouncer), unless it parametrizes ``backend`` itself."""
    if "backend" not in metafunc.fixturenames or _chooses_its_backends(metafunc):
        return
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    params = [*BACKENDS, *(["pgbouncer"] if module in THROUGH_PGBOUNCER else [])]
    metafunc.parametrize("backend", params, indirect=True)


def _param(request: pytest.FixtureRequest) -> str:
    return str(request.node.callspec.params["backend"])


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The backend a test runs on ("postgresql" through pgbouncer too); parametrize it
    with indirect=True to narrow it (``"pgbouncer"`` included)."""
    name = str(request.param)
    return "postgresql" if name == "pgbouncer" else name


@pytest.fixture
def through_pgbouncer(request: pytest.FixtureRequest, backend: str) -> bool:
    """True when the test's database is reached through pgbouncer."""
    return _param(request) == "pgbouncer"


@pytest.fixture
def db_url(server_urls: dict[str, URL | str], request: pytest.FixtureRequest, backend: str) -> URL:
    """URL of this run's database on ``backend`` (through pgbouncer, pgbouncer's)."""
    return _url_for(server_urls, _param(request))


@pytest.fixture
def direct_url(server_urls: dict[str, URL | str], backend: str) -> URL:
    """URL of this run's database on the server itself (never through pgbouncer)."""
    return _url_for(server_urls, backend)


async def _drop_every_table(manager: DatabaseManager) -> None:
    """Drop whatever an earlier test (or run) left, whichever metadata it came from.

    Why not ``MetaData.reflect()`` and ``drop_all()``: reflecting every table costs dozens
    of catalog queries, a fifth of a second per test. PostgreSQL drops the whole ``public``
    schema (tables, sequences, enum types) in one statement, MariaDB every table and view
    in one, SQLite each table with foreign keys off (it refuses the order otherwise).
    """
    dialect = manager.engine.dialect.name
    async with manager.engine.connect() as conn:
        if dialect == "postgresql":
            await conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
            await conn.commit()
            return
        if dialect in ("mysql", "mariadb"):
            rows = await conn.execute(
                text(
                    "SELECT table_name, table_type FROM information_schema.tables"
                    " WHERE table_schema = DATABASE()"
                )
            )
            found = {str(name): str(kind) for name, kind in rows}
            await conn.execute(text("SET FOREIGN_KEY_CHECKS = 0"))
            try:  # the connection goes back to the test's pool: checks on again, whatever
                for kind, names in (
                    ("VIEW", [n for n, k in found.items() if k == "VIEW"]),
                    ("TABLE", [n for n, k in found.items() if k != "VIEW"]),
                ):
                    if names:
                        listed = ", ".join(f"`{name}`" for name in names)
                        await conn.execute(text(f"DROP {kind} IF EXISTS {listed}"))
            finally:
                await conn.execute(text("SET FOREIGN_KEY_CHECKS = 1"))
            await conn.commit()
            return
        # SQLite: PRAGMA foreign_keys only takes effect outside a transaction, so on the
        # driver's own connection (autocommit; ours begins lazily at the first statement).
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        listed = await raw.execute(
            "SELECT type, name FROM sqlite_master"
            " WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%'"
        )
        found_sqlite = list(await listed.fetchall())
        await listed.close()
        await raw.execute("PRAGMA foreign_keys = OFF")
        try:
            for kind, name in found_sqlite:
                await raw.execute(f'DROP {str(kind).upper()} IF EXISTS "{name}"')
        finally:
            await raw.execute("PRAGMA foreign_keys = ON")


async def _create_tables(manager: DatabaseManager, metadatas: tuple[MetaData, ...]) -> None:
    """Every table of ``metadatas``, in one transaction, without asking first whether each
    exists (the database was just emptied)."""

    def create(connection: Any) -> None:
        for metadata in metadatas:
            metadata.create_all(connection, checkfirst=False)

    async with manager.engine.begin() as conn:
        await conn.run_sync(create)


MakeDb = Callable[..., Awaitable[DatabaseManager]]


@pytest.fixture
async def make_db(db_url: URL, through_pgbouncer: bool, direct_url: URL) -> AsyncIterator[MakeDb]:
    """Factory: ``await make_db(metadata, ..., **manager_kwargs)`` gives a configured
    default manager with fresh tables for each metadata (the test models by default).
    Through pgbouncer, the manager is in its pgbouncer mode with the server as direct URL."""
    managers: list[DatabaseManager] = []

    async def make(*metadatas: MetaData, default: bool = True, **kwargs: Any) -> DatabaseManager:
        kwargs.setdefault("pool_size", 5)
        if through_pgbouncer:
            kwargs.setdefault("pgbouncer", True)
            kwargs.setdefault("direct_url", direct_url)
        manager = DatabaseManager(db_url, **kwargs)
        managers.append(manager)
        if not managers[:-1]:
            await _drop_every_table(manager)
            await _create_tables(manager, metadatas or (Base.metadata,))
        if default:
            configure_database(manager)
        return manager

    yield make
    reset_database()
    for manager in managers:
        await manager.close()


@pytest.fixture
async def db(make_db: MakeDb) -> DatabaseManager:
    """A default manager on ``backend`` with fresh tables of the test models."""
    return await make_db()


@pytest.fixture
async def edb(make_db: MakeDb) -> AsyncIterator[DatabaseManager]:
    """A default manager with fresh event-log tables (the events tests)."""
    db = await make_db(event_metadata, pool_size=5, max_overflow=10)
    yield db
    await wakeups.drain(db.engine.sync_engine)  # the after-commit NOTIFY (PostgreSQL)


@pytest.fixture
async def other(make_db: MakeDb, edb: DatabaseManager) -> AsyncIterator[DatabaseManager]:
    """A second manager on ``edb``'s database: stands in for another process."""
    db = await make_db(default=False, pool_size=5)
    yield db
    await wakeups.drain(db.engine.sync_engine)
