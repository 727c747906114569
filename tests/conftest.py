"""Real databases for the suite: SQLite always, PostgreSQL and MariaDB when reachable.

Each run creates its own PostgreSQL and MariaDB databases (``aegis_t_<random>``) and drops
them at the end; a test gets fresh tables. Under ``CI=true`` an unreachable server fails
the run instead of skipping. Override the servers with ``AEGIS_TEST_POSTGRES_URL`` and
``AEGIS_TEST_MARIADB_URL``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import MetaData, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from aegis_shared.database import DatabaseManager, configure_database, reset_database
from tests.models import Base

pytest_plugins = ("pytester",)

POSTGRES_ADMIN = os.environ.get(
    "AEGIS_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
MARIADB_ADMIN = os.environ.get("AEGIS_TEST_MARIADB_URL", "mysql+asyncmy://root@127.0.0.1:3306/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
BACKENDS = ("sqlite", "postgresql", "mariadb")


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
    yield urls
    for backend, admin in admins.items():
        url = urls[backend]
        if isinstance(url, URL):
            asyncio.run(_drop_database(admin, url))


def _url_for(server_urls: dict[str, URL | str], backend: str) -> URL:
    url = server_urls[backend]
    if isinstance(url, URL):
        return url
    message = f"{backend} is not reachable ({url})"
    if IN_CI:
        pytest.fail(f"{message}; CI=true requires it", pytrace=False)
    pytest.skip(message)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend a test runs on; parametrize with indirect=True to narrow it."""
    return str(request.param)


@pytest.fixture
def db_url(server_urls: dict[str, URL | str], backend: str) -> URL:
    """URL of this run's database on ``backend``."""
    return _url_for(server_urls, backend)


async def _drop_every_table(manager: DatabaseManager) -> None:
    """Drop whatever an earlier test (or run) left, whichever metadata it came from."""

    def drop(connection: Any) -> None:
        existing = MetaData()
        existing.reflect(connection)
        existing.drop_all(connection)

    async with manager.engine.begin() as conn:
        await conn.run_sync(drop)


MakeDb = Callable[..., Awaitable[DatabaseManager]]


@pytest.fixture
async def make_db(db_url: URL) -> AsyncIterator[MakeDb]:
    """Factory: ``await make_db(metadata, ..., **manager_kwargs)`` gives a configured
    default manager with fresh tables for each metadata (the test models by default)."""
    managers: list[DatabaseManager] = []

    async def make(*metadatas: MetaData, default: bool = True, **kwargs: Any) -> DatabaseManager:
        kwargs.setdefault("pool_size", 5)
        manager = DatabaseManager(db_url, **kwargs)
        managers.append(manager)
        if not managers[:-1]:
            await _drop_every_table(manager)
            for metadata in metadatas or (Base.metadata,):
                await manager.create_all(metadata)
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
