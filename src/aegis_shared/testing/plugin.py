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

The async fixtures run on pytest-asyncio, which needs no settings for them: an ``async def``
test that asks for ``aegis_db`` or ``aegis_session`` is marked ``asyncio`` here, as if it
had ``@pytest.mark.asyncio``, also in pytest-asyncio's default strict mode.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest
from sqlalchemy import MetaData

from aegis_shared.database.manager import DatabaseManager
from aegis_shared.database.registry import configure_database, reset_database
from aegis_shared.database.session import AegisSession
from aegis_shared.testing.counting import QueryCounter, Target
from aegis_shared.testing.counting import assert_max_queries as _assert
from aegis_shared.testing.isolation import isolated_session

DEFAULT_URL = "sqlite+aiosqlite:///:memory:"

_ASYNC_FIXTURES = frozenset({"aegis_db", "aegis_session"})
# Markers of the async test runners; a test that has one already is left as it is.
_RUNNER_MARKERS = ("asyncio", "anyio", "trio")


def _async_fixture(function: Callable[..., Any]) -> Any:
    """``pytest_asyncio.fixture`` when pytest-asyncio is installed; otherwise a fixture
    that fails saying so, instead of pytest's "no plugin or hook handled it".

    pytest-asyncio is imported here, not at the top, because this plugin loads in every
    pytest run of an environment that has aegis-shared, with or without pytest-asyncio.
    """
    try:
        import pytest_asyncio
    except ImportError:
        name = function.__name__

        def missing() -> None:
            pytest.fail(
                f"The {name} fixture of aegis-shared is async and runs on pytest-asyncio, "
                "which is not installed: pip install pytest-asyncio "
                "(or pip install 'aegis-shared[testing]').",
                pytrace=False,
            )

        missing.__doc__ = function.__doc__
        return pytest.fixture(name=name)(missing)
    return pytest_asyncio.fixture(function)


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


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
    """Mark an ``async def`` test that takes ``aegis_db`` or ``aegis_session`` with
    ``asyncio``, before pytest-asyncio looks for the mark (returns None: pytest still
    collects the test itself)."""
    if not (
        inspect.iscoroutinefunction(obj)
        and isinstance(collector, pytest.Module | pytest.Class)
        and collector.istestfunction(obj, name)
        and collector.config.pluginmanager.has_plugin("asyncio")
    ):
        return
    if _ASYNC_FIXTURES.isdisjoint(inspect.signature(obj).parameters):
        return
    own = [mark.name for mark in getattr(obj, "pytestmark", [])]
    if any(m in own or collector.get_closest_marker(m) for m in _RUNNER_MARKERS):
        return
    pytest.mark.asyncio(obj)


@_async_fixture
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


@_async_fixture
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
