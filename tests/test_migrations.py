"""The async Alembic environment: autogenerate, upgrade and downgrade on real databases."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import inspect, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

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
