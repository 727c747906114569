"""pytest plugin of aegis-shared (loaded automatically through the ``pytest11`` entry point).

Fixtures:

* ``aegis_db``: a :class:`~aegis_shared.database.DatabaseManager` for ``--aegis-db-url``
  (or ``AEGIS_TEST_DATABASE_URL``; in-memory SQLite by default), configured as the default
  manager, with the tables of ``aegis_metadata`` created.
* ``aegis_metadata``: the metadata whose tables are created; override it in your
  ``conftest.py`` to return your models' ``Base.metadata``.
* ``aegis_session``: an isolated session (outer transaction plus savepoints, rolled back
  at teardown).
* ``assert_max_queries``: ``with assert_max_queries(3): ...`` fails when more statements
  are sent.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager

import pytest
from sqlalchemy import MetaData

from aegis_shared.database.manager import DatabaseManager
from aegis_shared.database.registry import configure_database, reset_database
from aegis_shared.database.session import AegisSession
from aegis_shared.testing.counting import QueryCounter, Target
from aegis_shared.testing.counting import assert_max_queries as _assert
from aegis_shared.testing.isolation import isolated_session

DEFAULT_URL = "sqlite+aiosqlite:///:memory:"


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register ``--aegis-db-url``."""
    parser.addoption(
        "--aegis-db-url",
        default=None,
        help="database URL for the aegis_db fixture (default: AEGIS_TEST_DATABASE_URL or "
        "in-memory SQLite)",
    )


@pytest.fixture
def aegis_metadata() -> MetaData:
    """The metadata whose tables ``aegis_db`` creates; override to return your own."""
    from aegis_shared.models import Base

    return Base.metadata


@pytest.fixture
async def aegis_db(
    request: pytest.FixtureRequest, aegis_metadata: MetaData
) -> AsyncIterator[DatabaseManager]:
    """A configured default manager with fresh tables, closed after the test."""
    url = (
        request.config.getoption("--aegis-db-url")
        or os.environ.get("AEGIS_TEST_DATABASE_URL")
        or DEFAULT_URL
    )
    manager = DatabaseManager(url)
    await manager.drop_all(aegis_metadata)
    await manager.create_all(aegis_metadata)
    previous = reset_database()
    configure_database(manager)
    try:
        yield manager
    finally:
        reset_database()
        if previous is not None:
            configure_database(previous)
        await manager.close()


@pytest.fixture
async def aegis_session(aegis_db: DatabaseManager) -> AsyncIterator[AegisSession]:
    """A session whose changes are all rolled back after the test."""
    async with isolated_session(aegis_db.engine) as session:
        yield session


@pytest.fixture
def assert_max_queries() -> Callable[..., AbstractContextManager[QueryCounter]]:
    """``with assert_max_queries(n[, target]):`` fails if the block sends more than n
    statements (target: a manager or engine; the default manager if left out)."""

    def check(limit: int, target: Target = None) -> AbstractContextManager[QueryCounter]:
        return _assert(limit, target)

    return check
