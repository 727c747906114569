"""Settings from the environment, DatabaseManager construction, closing and health checks.

Every test runs in an empty temporary directory with no DATABASE_* variables set, so
neither the developer's environment nor a stray ``.env`` file can change the outcome.
"""

from __future__ import annotations

import asyncio
import logging
import os
import traceback
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from aegis_shared.config import DEFAULT_DATABASE_URL, Settings
from aegis_shared.database import DatabaseManager
from aegis_shared.errors.exceptions import (
    ConfigurationError,
    DatabaseError,
    DatabaseManagerClosedError,
    PoolTimeoutError,
)
from aegis_shared.errors.redaction import mask_url


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.upper().startswith("DATABASE_"):
            monkeypatch.delenv(name)


@pytest.fixture
async def managers() -> AsyncIterator[Callable[..., DatabaseManager]]:
    """Factory of managers that are closed after the test."""
    made: list[DatabaseManager] = []

    def make(*args: Any, **kwargs: Any) -> DatabaseManager:
        manager = DatabaseManager(*args, **kwargs)
        made.append(manager)
        return manager

    yield make
    for manager in made:
        await manager.close()


def sqlite_url(tmp_path: Path, name: str = "app.db") -> str:
    return f"sqlite+aiosqlite:///{tmp_path / name}"


# -- Settings ------------------------------------------------------------------------------


def test_defaults() -> None:
    settings = Settings()
    assert settings.database_url == DEFAULT_DATABASE_URL == "sqlite+aiosqlite:///./aegis.db"
    assert settings.database_pool_size == 20
    assert settings.database_max_overflow == 10
    assert settings.database_pool_timeout == 30
    assert settings.database_pool_recycle == 3600
    assert settings.database_retry_attempts == 6
    assert settings.database_retry_backoff == 2
    assert settings.database_retry_base_delay == 0.2
    assert settings.database_retry_max_delay == 2
    assert settings.database_retry_deadline == 30
    assert settings.database_connect_timeout == 10
    assert settings.database_command_timeout is None  # the statement timeout + 5 s, or 60 s


def test_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql+asyncpg://app:secret@db.internal:5433/aegis"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("DATABASE_POOL_SIZE", "7")
    monkeypatch.setenv("DATABASE_MAX_OVERFLOW", "0")
    monkeypatch.setenv("DATABASE_POOL_TIMEOUT", "2.5")
    monkeypatch.setenv("DATABASE_POOL_RECYCLE", "600")
    monkeypatch.setenv("DATABASE_RETRY_ATTEMPTS", "5")
    monkeypatch.setenv("DATABASE_RETRY_BACKOFF", "1.5")

    settings = Settings()
    assert settings.database_url == url
    assert settings.database_pool_size == 7
    assert settings.database_max_overflow == 0
    assert settings.database_pool_timeout == 2.5
    assert settings.database_pool_recycle == 600
    assert settings.database_retry_attempts == 5
    assert settings.database_retry_backoff == 1.5


def test_reads_a_dotenv_file_and_the_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("DATABASE_POOL_SIZE=9\nDATABASE_MAX_OVERFLOW=4\n")
    monkeypatch.setenv("DATABASE_MAX_OVERFLOW", "6")
    settings = Settings()
    assert settings.database_pool_size == 9
    assert settings.database_max_overflow == 6


def test_keywords_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_POOL_SIZE", "7")
    assert Settings(database_pool_size=3).database_pool_size == 3


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_POOL_SIZE", "abc"),
        ("DATABASE_POOL_SIZE", "0"),
        ("DATABASE_POOL_SIZE", "-5"),
        ("DATABASE_POOL_SIZE", "2.5"),
        ("DATABASE_URL", "not-a-url"),
        ("DATABASE_MAX_OVERFLOW", "-1"),
        ("DATABASE_POOL_TIMEOUT", "0"),
        ("DATABASE_POOL_TIMEOUT", "soon"),
        ("DATABASE_POOL_RECYCLE", "-2"),
        ("DATABASE_RETRY_ATTEMPTS", "0"),
        ("DATABASE_RETRY_BACKOFF", "0.5"),
    ],
)
def test_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as caught:
        Settings()
    message = str(caught.value)
    assert name in message
    assert repr(value) in message
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, DatabaseError)
    assert isinstance(caught.value.__cause__, ValidationError)


def test_every_bad_value_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_POOL_SIZE", "abc")
    monkeypatch.setenv("DATABASE_RETRY_ATTEMPTS", "0")
    with pytest.raises(ConfigurationError) as caught:
        Settings()
    assert "DATABASE_POOL_SIZE" in str(caught.value)
    assert "DATABASE_RETRY_ATTEMPTS" in str(caught.value)


def test_bad_keyword_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="DATABASE_POOL_SIZE"):
        Settings(database_pool_size=0)


# -- DatabaseManager.from_settings -------------------------------------------------------------


async def test_from_settings_applies_the_pool_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", sqlite_url(tmp_path))
    monkeypatch.setenv("DATABASE_POOL_SIZE", "1")
    monkeypatch.setenv("DATABASE_MAX_OVERFLOW", "1")
    monkeypatch.setenv("DATABASE_POOL_TIMEOUT", "0.2")
    monkeypatch.setenv("DATABASE_BACKGROUND_POOL_SIZE", "3")
    monkeypatch.setenv("DATABASE_RETRY_ATTEMPTS", "4")
    monkeypatch.setenv("DATABASE_RETRY_BACKOFF", "3")
    db = DatabaseManager.from_settings(Settings())
    try:
        status = db.pool_status()
        assert status["main"]["size"] == 1
        assert status["background"]["size"] == 3
        assert db.retry_attempts == 4
        assert db.retry_backoff == 3
        assert await db.health_check() is True

        # pool_size 1 + max_overflow 1: two connections, and the third waits pool_timeout.
        first = await db.engine.connect()
        second = await db.engine.connect()
        try:
            assert db.pool_status()["main"]["checked_out"] == 2
            with pytest.raises(PoolTimeoutError, match="DATABASE_POOL_SIZE"):
                await db.engine.connect()
        finally:
            await first.close()
            await second.close()
    finally:
        await db.close()


async def test_from_settings_applies_the_timeout_and_retry_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", sqlite_url(tmp_path))
    monkeypatch.setenv("DATABASE_STATEMENT_TIMEOUT", "4")
    monkeypatch.setenv("DATABASE_CONNECT_TIMEOUT", "3")
    monkeypatch.setenv("DATABASE_COMMAND_TIMEOUT", "9")
    monkeypatch.setenv("DATABASE_RETRY_BASE_DELAY", "0.5")
    monkeypatch.setenv("DATABASE_RETRY_MAX_DELAY", "4")
    monkeypatch.setenv("DATABASE_RETRY_DEADLINE", "12")
    db = DatabaseManager.from_settings(Settings())
    try:
        assert (db.connect_timeout, db.command_timeout) == (3, 9)
        assert (db.retry_base_delay, db.retry_max_delay, db.retry_deadline) == (0.5, 4, 12)
    finally:
        await db.close()
    monkeypatch.setenv("DATABASE_COMMAND_TIMEOUT", "4")
    with pytest.raises(ConfigurationError, match="DATABASE_COMMAND_TIMEOUT"):
        DatabaseManager.from_settings(Settings())


async def test_from_settings_reads_the_environment_itself(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", sqlite_url(tmp_path))
    monkeypatch.setenv("DATABASE_POOL_SIZE", "6")
    db = DatabaseManager.from_settings()
    try:
        assert db.pool_status()["main"]["size"] == 6
        assert db.url.database == str(tmp_path / "app.db")
    finally:
        await db.close()


async def test_from_settings_overrides(tmp_path: Path) -> None:
    settings = Settings(database_url=sqlite_url(tmp_path), database_pool_size=8)
    db = DatabaseManager.from_settings(settings, pool_size=2)
    try:
        assert db.pool_status()["main"]["size"] == 2
    finally:
        await db.close()


async def test_from_settings_normalizes_a_plain_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:secret@db.internal/aegis")
    db = DatabaseManager.from_settings(Settings())
    try:
        assert db.url.drivername == "postgresql+asyncpg"
        assert db.dialect_name == "postgresql"
    finally:
        await db.close()


async def test_from_settings_with_an_unsupported_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "oracle://app@db.internal/aegis")
    settings = Settings()  # it parses; the manager refuses the driver
    with pytest.raises(ConfigurationError, match=r"DATABASE_URL.*'oracle'"):
        DatabaseManager.from_settings(settings)


# -- DatabaseManager arguments ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("pool_size", 0),
        ("pool_size", -1),
        ("pool_size", True),
        ("pool_size", None),
        ("max_overflow", -1),
        ("pool_timeout", 0),
        ("pool_recycle", -2),
        ("background_pool_size", 0),
        ("background_max_overflow", -1),
        ("retry_attempts", 0),
        ("retry_backoff", 0.5),
        ("max_page_size", 0),
        ("statement_timeout", 0),
    ],
)
def test_bad_manager_argument(tmp_path: Path, argument: str, value: Any) -> None:
    with pytest.raises(ConfigurationError) as caught:
        DatabaseManager(sqlite_url(tmp_path), **{argument: value})
    assert f"{argument}={value!r}" in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("url", "drivername"),
    [
        ("postgresql://app:secret@db.internal/aegis", "postgresql+asyncpg"),
        ("postgres://app:secret@db.internal/aegis", "postgresql+asyncpg"),
        ("postgresql+psycopg2://app:secret@db.internal/aegis", "postgresql+asyncpg"),
        ("postgresql+asyncpg://app:secret@db.internal/aegis", "postgresql+asyncpg"),
        ("mysql://app:secret@db.internal/aegis", "mysql+asyncmy"),
        ("mysql+pymysql://app:secret@db.internal/aegis", "mysql+asyncmy"),
        ("mariadb://app:secret@db.internal/aegis", "mysql+asyncmy"),
        ("sqlite:///relative.db", "sqlite+aiosqlite"),
        ("sqlite://", "sqlite+aiosqlite"),
    ],
)
def test_plain_urls_get_an_async_driver(
    managers: Callable[..., DatabaseManager], url: str, drivername: str
) -> None:
    db = managers(url)
    assert db.url.drivername == drivername
    if "secret" in url:
        assert db.url.username == "app"
        assert db.url.password == "secret"
        assert db.url.host == "db.internal"
        assert db.url.database == "aegis"
        assert "secret" not in repr(db)


async def test_a_plain_sqlite_url_works(managers: Callable[..., DatabaseManager]) -> None:
    db = managers("sqlite:///plain.db")  # relative to the temporary working directory
    assert await db.health_check() is True
    assert await asyncio.to_thread(Path("plain.db").exists)


@pytest.mark.parametrize(
    "url",
    [
        "oracle://app@db.internal/aegis",
        "mssql+pyodbc://app@db.internal/aegis",
        "postgresql+psycopg://app@db.internal/aegis",
        "sqlite+pysqlcipher:///secret.db",
    ],
)
def test_unsupported_driver(url: str) -> None:
    with pytest.raises(ConfigurationError, match="does not support") as caught:
        DatabaseManager(url)
    assert "DATABASE_URL" in str(caught.value)
    assert url.split(":")[0] in str(caught.value)


@pytest.mark.parametrize("url", ["not-a-url", "", "://nothing"])
def test_unparseable_url(url: str) -> None:
    with pytest.raises(ConfigurationError, match="DATABASE_URL"):
        DatabaseManager(url)


# -- passwords never shown ------------------------------------------------------------------

SECRET = "s3cr3t-pw"


def everything_printed(error: BaseException) -> str:
    """What a traceback of ``error`` shows: its message, repr and every chained error."""
    return "".join(traceback.format_exception(error)) + repr(error)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://app:s3cr3t-pw@db:port/app", "postgresql://app:***@db:port/app"),
        ("postgresql://app:s3cr3t-pw@db:5432:1/app", "postgresql://app:***@db:5432:1/app"),
        ("not a url app:s3cr3t-pw@db", "not a url app:***@db"),
        ("app:s3cr3t-pw@db/app", "app:***@db/app"),
    ],
)
@pytest.mark.parametrize("given_as", ["environment", "keyword"])
def test_an_unparseable_url_is_shown_without_its_password(
    monkeypatch: pytest.MonkeyPatch, url: str, masked: str, given_as: str
) -> None:
    keywords = {}
    if given_as == "environment":
        monkeypatch.setenv("DATABASE_URL", url)
    else:
        keywords["database_url"] = url
    with pytest.raises(ConfigurationError) as caught:
        Settings(**keywords)
    message = str(caught.value)
    assert f"DATABASE_URL {masked!r} is not a database URL" in message
    assert "percent-encode" in message  # the usual cause, and what to do
    assert SECRET not in everything_printed(caught.value)
    assert isinstance(caught.value.__cause__, ValidationError)

    with pytest.raises(ConfigurationError) as caught:
        DatabaseManager(url)
    assert masked in str(caught.value)
    assert SECRET not in everything_printed(caught.value)


def test_a_url_that_parses_but_is_unusable_is_shown_without_its_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"oracle://app:{SECRET}@db.internal/app")
    settings = Settings()
    with pytest.raises(ConfigurationError, match="does not support") as caught:
        DatabaseManager.from_settings(settings)
    assert SECRET not in everything_printed(caught.value)


def test_a_password_with_an_unencoded_at_sign_is_refused_masked() -> None:
    # SQLAlchemy would parse it wrongly (password "p", host "ss", database
    # "s3cr3t-pw@db.internal/app"): connecting would fail on host "ss", and hiding the
    # password field would still show the rest of the password.
    url = f"postgresql://app:p@ss/{SECRET}@db.internal/app"
    for attempt in (lambda: Settings(database_url=url), lambda: DatabaseManager(url)):
        with pytest.raises(ConfigurationError, match="percent-encode") as caught:
            attempt()
        assert "'postgresql://app:***@db.internal/app' is not a database URL" in str(caught.value)
        assert SECRET not in everything_printed(caught.value)


def test_an_at_sign_in_a_sqlite_path_is_a_path(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/team@home.db"
    assert Settings(database_url=url).database_url == url


async def test_a_failed_connect_logs_no_password(
    managers: Callable[..., DatabaseManager], caplog: pytest.LogCaptureFixture
) -> None:
    db = managers(f"postgresql+asyncpg://postgres:{SECRET}@127.0.0.1:1/x", pool_timeout=5)
    with caplog.at_level(logging.DEBUG):
        assert await db.health_check() is False
    assert "health check failed" in caplog.text
    assert SECRET not in caplog.text


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://user:pw@host/db", "postgresql://user:***@host/db"),
        ("postgresql://user@host/db", "postgresql://user@host/db"),
        ("postgresql://host/db", "postgresql://host/db"),
        ("mysql://u:a:b@c@host/db", "mysql://u:***@host/db"),
        (
            "mysql://u@host/db?password=pw&charset=utf8",
            "mysql://u@host/db?password=***&charset=utf8",
        ),
        ("sqlite+aiosqlite:///./aegis.db", "sqlite+aiosqlite:///./aegis.db"),
        ("not-a-url", "not-a-url"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


# -- closing ---------------------------------------------------------------------------------


async def test_closed_manager_refuses_use(db: DatabaseManager) -> None:
    async with db.session() as session:
        assert (await session.execute("SELECT 1")).scalar() == 1
    assert db.closed is False

    await db.close()
    assert db.closed is True
    assert "closed" in repr(db)
    with pytest.raises(DatabaseManagerClosedError, match="closed"):
        async with db.session():
            pass
    with pytest.raises(DatabaseManagerClosedError):
        async with db.background_session():
            pass
    with pytest.raises(DatabaseManagerClosedError):
        _ = db.engine
    with pytest.raises(DatabaseManagerClosedError):
        db.session_factory()
    await db.close()  # closing twice is harmless
    assert await db.health_check() is False


# -- health checks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://postgres@127.0.0.1:1/x",
        "mysql+asyncmy://root@127.0.0.1:1/x",
        "sqlite+aiosqlite:////nonexistent-aegis-dir/x.db",
    ],
    ids=["postgresql", "mariadb", "sqlite"],
)
async def test_health_check_of_an_unreachable_database(
    managers: Callable[..., DatabaseManager], url: str
) -> None:
    db = managers(url, pool_timeout=5)
    assert await db.health_check() is False
    assert await db.health_check() is False  # and again: nothing left broken behind


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://postgres@127.0.0.1:5432/aegis_no_such_database",
        "postgresql+asyncpg://aegis_no_such_role@127.0.0.1:5432/postgres",
        "mysql+asyncmy://root@127.0.0.1:3306/aegis_no_such_database",
        "mysql+asyncmy://aegis_no_such_user@127.0.0.1:3306/test",
    ],
    ids=["pg-database", "pg-role", "mariadb-database", "mariadb-user"],
)
async def test_health_check_with_a_wrong_database_or_user(
    managers: Callable[..., DatabaseManager], url: str
) -> None:
    db = managers(url)
    assert await db.health_check() is False


async def test_health_check_of_a_reachable_database(db: DatabaseManager) -> None:
    assert await db.health_check() is True


def test_repr_of_settings_never_shows_the_database_password() -> None:
    settings = Settings(database_url="postgresql+asyncpg://app:s3cr3t-pw@db.internal/app")
    assert "s3cr3t-pw" not in repr(settings)
    assert "s3cr3t-pw" not in str(settings)
