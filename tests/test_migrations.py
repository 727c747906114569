"""The async Alembic environment: autogenerate, upgrade and downgrade on real databases."""

from __future__ import annotations

import asyncio
import os
import textwrap
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from aegis_shared.errors.exceptions import ConfigurationError

ENV_PY = textwrap.dedent(
    """
    from sqlalchemy import String
    from sqlalchemy.orm import Mapped, mapped_column

    from aegis_shared.migrations import run_migrations
    from aegis_shared.models import BaseEntity
    from sqlalchemy.orm import DeclarativeBase
    from aegis_shared.models import NAMING_CONVENTION
    from aegis_shared.sessions import ServerSessionMixin, SessionChildMixin
    from sqlalchemy import MetaData


    class MigBase(DeclarativeBase):
        metadata = MetaData(naming_convention=NAMING_CONVENTION)


    class Widget(MigBase):
        __tablename__ = "mig_widgets"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(50), unique=True)


    class MigSession(ServerSessionMixin, MigBase):
        __tablename__ = "mig_sessions"


    class MigNote(SessionChildMixin, MigBase):
        __tablename__ = "mig_notes"
        __session_model__ = MigSession
        id: Mapped[int] = mapped_column(primary_key=True)


    def only_ours(name, type_, parent_names):
        # The run's database also holds other tests' tables; leave them out of the diff.
        return type_ != "table" or name.startswith("mig_")


    run_migrations(
        MigBase.metadata, version_table="mig_alembic_version", include_name=only_ours
    )
    """
)


def _tables(url: URL) -> set[str]:
    async def read() -> set[str]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
        finally:
            await engine.dispose()

    return asyncio.run(read())


def _drop_version_table(url: URL) -> None:
    async def drop() -> None:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.execute(text("DROP TABLE IF EXISTS mig_alembic_version"))
        finally:
            await engine.dispose()

    asyncio.run(drop())


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_autogenerate_upgrade_downgrade(db_url: URL, tmp_path: Path) -> None:
    script = tmp_path / "migrations"
    (script / "versions").mkdir(parents=True)
    (script / "env.py").write_text(ENV_PY)
    template = Path(__file__).resolve().parent.parent / "migrations" / "script.py.mako"
    (script / "script.py.mako").write_text(template.read_text())
    config = Config()
    config.set_main_option("script_location", str(script))
    config.set_main_option(
        "sqlalchemy.url", db_url.render_as_string(hide_password=False).replace("%", "%%")
    )
    try:
        command.revision(config, message="create widgets", autogenerate=True)
        (revision,) = list((script / "versions").glob("*.py"))
        body = revision.read_text()
        assert "mig_widgets" in body
        assert "uq_mig_widgets_name" in body  # named by the naming convention
        # The session table's expires_at index exists everywhere but on PostgreSQL (its
        # ddl_if), in migrations as in create_all.
        on_postgresql = db_url.get_backend_name() == "postgresql"
        assert ("ix_mig_sessions_expires_at" in body) is not on_postgresql
        assert "ix_mig_sessions_created_at" in body

        command.upgrade(config, "head")
        assert {"mig_widgets", "mig_sessions", "mig_notes"} <= _tables(db_url)

        # Nothing left to propose: a second autogenerate finds the schema up to date.
        command.revision(config, message="no changes", autogenerate=True)
        (second,) = [p for p in (script / "versions").glob("*.py") if p != revision]
        upgrade = second.read_text().split("def upgrade", 1)[1].split("def downgrade", 1)[0]
        assert "op." not in upgrade, upgrade

        command.downgrade(config, "base")
        assert not {"mig_widgets", "mig_sessions", "mig_notes"} & _tables(db_url)
    finally:
        _drop_version_table(db_url)


# -- where the URL comes from, and errors that say so -------------------------------------

SECRET = "s3cr3t-pw"


@pytest.fixture
def alembic_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Config]:
    """A fresh Alembic project in an empty working directory with no DATABASE_* set:
    ``make(sqlalchemy_url=None, run_migrations_args="")`` writes alembic.ini and env.py."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.upper().startswith("DATABASE_"):
            monkeypatch.delenv(name)

    def make(sqlalchemy_url: str | None = None, run_migrations_args: str = "") -> Config:
        script = tmp_path / "migrations"
        (script / "versions").mkdir(parents=True, exist_ok=True)
        (script / "env.py").write_text(
            "import os\n"
            "from sqlalchemy import MetaData\n"
            "from aegis_shared.migrations import run_migrations\n"
            f"run_migrations(MetaData(){run_migrations_args})\n"
        )
        ini = f"[alembic]\nscript_location = {script}\n"
        if sqlalchemy_url is not None:
            ini += f"sqlalchemy.url = {sqlalchemy_url}\n"
        (tmp_path / "alembic.ini").write_text(ini)
        return Config(str(tmp_path / "alembic.ini"))

    return make


def _upgrade_error(config: Config) -> str:
    with pytest.raises(ConfigurationError) as caught:
        command.upgrade(config, "head")
    message = str(caught.value)
    assert SECRET not in "".join(traceback.format_exception(caught.value))
    return message


def test_alembic_init_placeholder_is_blamed_on_alembic_ini(
    alembic_project: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A valid DATABASE_URL is set, but alembic.ini still has what `alembic init` wrote.
    monkeypatch.setenv("DATABASE_URL", "sqlite+aiosqlite:///./app.db")
    message = _upgrade_error(alembic_project("driver://user:pass@localhost/dbname"))
    assert message.startswith(
        "sqlalchemy.url in alembic.ini is still Alembic's placeholder "
        "'driver://user:pass@localhost/dbname'"
    )
    assert "delete that line to use DATABASE_URL" in message
    assert "environment variable" not in message


def test_a_bad_url_in_alembic_ini_names_alembic_ini(alembic_project: Callable[..., Config]) -> None:
    message = _upgrade_error(alembic_project(f"postgresql://app:{SECRET}@db:port/app"))
    assert message.startswith(
        "sqlalchemy.url in alembic.ini 'postgresql://app:***@db:port/app' is not a database URL"
    )
    assert message.endswith(
        "set sqlalchemy.url in alembic.ini to your database URL, or delete that line to use "
        "DATABASE_URL"
    )


def test_an_unsupported_driver_in_alembic_ini_names_alembic_ini(
    alembic_project: Callable[..., Config],
) -> None:
    message = _upgrade_error(alembic_project(f"oracle://app:{SECRET}@db/app"))
    assert message.startswith("sqlalchemy.url in alembic.ini uses driver 'oracle'")


@pytest.mark.parametrize(
    ("url", "start"),
    [
        (
            f"oracle://app:{SECRET}@db/app",
            "the DATABASE_URL environment variable uses driver 'oracle'",
        ),
        (
            f"postgresql://app:{SECRET}@db:port/app",
            "Invalid database settings: DATABASE_URL 'postgresql://app:***@db:port/app' is not",
        ),
    ],
)
def test_a_bad_database_url_is_blamed_on_the_environment_variable(
    alembic_project: Callable[..., Config], monkeypatch: pytest.MonkeyPatch, url: str, start: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    message = _upgrade_error(alembic_project())
    assert message.startswith(start)
    assert "alembic.ini" not in message


def test_a_bad_url_argument_is_blamed_on_the_argument(
    alembic_project: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "sqlite+aiosqlite:///./app.db")
    # Through a variable, so that the traceback's source line of env.py shows no password.
    monkeypatch.setenv("APP_MIGRATION_URL", f"mssql://sa:{SECRET}@db/x")
    config = alembic_project(
        "sqlite+aiosqlite:///./app.db", run_migrations_args=', url=os.environ["APP_MIGRATION_URL"]'
    )
    message = _upgrade_error(config)
    assert message.startswith("the url argument of run_migrations() uses driver 'mssql'")
    assert message.endswith("; pass a database URL")


def test_without_alembic_ini_url_or_database_url_the_default_is_migrated(
    alembic_project: Callable[..., Config], tmp_path: Path
) -> None:
    command.upgrade(alembic_project(), "head")
    assert "alembic_version" in _tables(make_url(f"sqlite+aiosqlite:///{tmp_path}/aegis.db"))


def test_database_direct_url_is_migrated_rather_than_a_pooler_in_front(
    alembic_project: Callable[..., Config], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # DATABASE_URL (a pooler, here unusable) is left alone: DDL and its session-level
    # lock timeout belong on the server itself.
    monkeypatch.setenv("DATABASE_URL", f"oracle://app:{SECRET}@pooler/app")
    monkeypatch.setenv("DATABASE_DIRECT_URL", f"sqlite+aiosqlite:///{tmp_path}/direct.db")
    command.upgrade(alembic_project(), "head")
    assert "alembic_version" in _tables(make_url(f"sqlite+aiosqlite:///{tmp_path}/direct.db"))


def test_a_bad_direct_url_is_blamed_on_database_direct_url(
    alembic_project: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_DIRECT_URL", f"oracle://app:{SECRET}@db/app")
    message = _upgrade_error(alembic_project())
    assert message.startswith("the DATABASE_DIRECT_URL environment variable uses driver 'oracle'")
    assert message.endswith("set DATABASE_DIRECT_URL to your database URL")
