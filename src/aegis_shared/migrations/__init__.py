"""An async Alembic environment in one call.

A project's ``alembic/env.py`` becomes::

    from aegis_shared.migrations import run_migrations
    from myapp.models import Base

    run_migrations(Base.metadata)

The URL is the one passed in, else ``sqlalchemy.url`` of ``alembic.ini`` when set, else
``DATABASE_DIRECT_URL`` when set (the server itself, when ``DATABASE_URL`` is a pooler),
else ``DATABASE_URL`` (through :class:`~aegis_shared.config.Settings`). A URL that cannot be used
fails with :class:`~aegis_shared.errors.exceptions.ConfigurationError` naming where it came
from (Alembic's stock placeholder ``driver://user:pass@localhost/dbname`` included), its
password masked.

``alembic revision --autogenerate`` and ``alembic upgrade head`` run through the same async
driver as the application, SQLite included (batch mode, so ALTERs work there). Indexes and
constraints declared with ``ddl_if(dialect=...)`` are left out where ``create_all`` leaves
them out, and column types from other packages (``aegis_shared.models.types.UTCDateTime``)
are imported by the migrations that use them.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from alembic import context
from alembic.config import Config
from sqlalchemy import MetaData, pool, text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import create_async_engine

from aegis_shared.database.urls import normalize_url
from aegis_shared.errors.exceptions import ConfigurationError

# What `alembic init` writes into alembic.ini, in every template.
ALEMBIC_PLACEHOLDER = "driver://user:pass@localhost/dbname"


#: ``Config.attributes`` key of the DDL lock timeout in seconds (``aegis db upgrade
#: --ddl-lock-timeout``): how long one DDL statement may wait for a table lock before it
#: fails, instead of queueing every query of that table behind it while it waits.
DDL_LOCK_TIMEOUT_ATTRIBUTE = "aegis_ddl_lock_timeout"


def migration_url(config: Config, url: str | None = None) -> tuple[str, str, str]:
    """The URL ``config``'s migrations run on, where it came from, and what to do if it is
    wrong: ``url`` when given, else ``sqlalchemy.url`` of ``alembic.ini`` when set, else
    ``DATABASE_DIRECT_URL`` (the server without a pooler) when set, else ``DATABASE_URL``."""
    if url:
        return url, "the url argument of run_migrations()", "pass a database URL"
    configured = config.get_main_option("sqlalchemy.url")
    if configured:
        ini = config.config_file_name
        where = f"sqlalchemy.url in {Path(ini).name if ini else 'the Alembic config'}"
        return (
            configured,
            where,
            f"set {where} to your database URL, or delete that line to use DATABASE_URL",
        )
    from aegis_shared.config import Settings

    settings = Settings()
    names = {name.upper() for name in os.environ}  # as Settings reads them
    if settings.database_direct_url:
        # DDL and the session-level settings below belong on the server itself, not on a
        # transaction pooler in front of it.
        where = (
            "the DATABASE_DIRECT_URL environment variable"
            if "DATABASE_DIRECT_URL" in names
            else "DATABASE_DIRECT_URL (from .env)"
        )
        return settings.database_direct_url, where, "set DATABASE_DIRECT_URL to your database URL"
    if "DATABASE_URL" in names:
        where = "the DATABASE_URL environment variable"
    else:
        where = "DATABASE_URL (from .env, or the default)"
    return settings.database_url, where, "set DATABASE_URL to your database URL"


def _url(url: str | None) -> tuple[str, str, str]:
    """The URL to migrate, where it came from, and what to do if it is wrong."""
    return migration_url(context.config, url)


def _database_url(url: str | None) -> URL:
    """The URL to migrate with its async driver; ConfigurationError naming its source."""
    value, where, fix = _url(url)
    if value.strip() == ALEMBIC_PLACEHOLDER:
        raise ConfigurationError(
            f"{where} is still Alembic's placeholder {ALEMBIC_PLACEHOLDER!r}; {fix}"
        )
    try:
        return normalize_url(value, where)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{exc}; {fix}") from None


def _made_on(item: Any, dialect_name: str) -> bool:
    """False for a schema item whose ``ddl_if(dialect=...)`` leaves ``dialect_name`` out.

    Why: ``metadata.create_all`` honours ``ddl_if`` but Alembic's autogenerate does not,
    so without this a migration would create, say, the session table's ``expires_at``
    index on PostgreSQL (where leaving it out keeps touches HOT) and propose it again on
    every run. ``_ddl_if`` is where SQLAlchemy 2 keeps the condition.
    """
    condition = getattr(item, "_ddl_if", None)
    wanted = getattr(condition, "dialect", None)
    if wanted is None:
        return True
    return dialect_name == wanted if isinstance(wanted, str) else dialect_name in wanted


def _include_object(dialect_name: str, user_filter: Any) -> Any:
    def include_object(
        item: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
    ) -> bool:
        if not reflected and not _made_on(item, dialect_name):
            return False
        return user_filter is None or bool(user_filter(item, name, type_, reflected, compare_to))

    return include_object


def _render_item(user_render: Any) -> Any:
    def render_item(type_: str, item: Any, autogen_context: Any) -> Any:
        if user_render is not None:
            rendered = user_render(type_, item, autogen_context)
            if rendered is not False:
                return rendered
        module = type(item).__module__
        if type_ == "type" and not module.startswith("sqlalchemy"):
            # Alembic writes a type of ours as aegis_shared.models.types.UTCDateTime(...)
            # but imports only sqlalchemy: without this the migration fails to import.
            autogen_context.imports.add(f"import {module}")
        return False  # Alembic's own rendering

    return render_item


def _configure(connection: Connection | None, metadata: MetaData, url: URL, **extra: Any) -> None:
    dialect_name = connection.dialect.name if connection is not None else url.get_backend_name()
    options: dict[str, Any] = {
        "target_metadata": metadata,
        "compare_type": True,
        "render_as_batch": url.get_backend_name() == "sqlite",
    }
    options.update(extra)
    options["include_object"] = _include_object(dialect_name, extra.get("include_object"))
    options["render_item"] = _render_item(extra.get("render_item"))
    if connection is None:
        context.configure(url=url, literal_binds=True, **options)
    else:
        context.configure(connection=connection, **options)


def _set_ddl_lock_timeout(connection: Connection) -> None:
    """Bound each DDL statement's wait for a table lock, when the command asked for it.

    Session-level (and committed at once, before Alembic looks at the connection, which
    would otherwise take the open transaction for the caller's): it holds for every
    migration of the run. SQLite has no table locks; its busy timeout bounds the wait.
    """
    seconds = context.config.attributes.get(DDL_LOCK_TIMEOUT_ATTRIBUTE)
    if seconds is None:
        return
    name = connection.dialect.name
    if name == "postgresql":
        connection.execute(text(f"SET lock_timeout = {int(float(seconds) * 1000)}"))
    elif name in ("mysql", "mariadb"):
        # Whole seconds, at least one: 0 would mean "do not wait at all" on MariaDB.
        connection.execute(text(f"SET SESSION lock_wait_timeout = {max(1, round(float(seconds)))}"))
    else:
        return
    connection.commit()


def _run_sync(connection: Connection, metadata: MetaData, url: URL, extra: dict[str, Any]) -> None:
    _set_ddl_lock_timeout(connection)
    _configure(connection, metadata, url, **extra)
    with context.begin_transaction():
        context.run_migrations()


async def _run_online(metadata: MetaData, url: URL, extra: dict[str, Any]) -> None:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_sync, metadata, url, extra)
    finally:
        await engine.dispose()


def run_migrations(metadata: MetaData, url: str | None = None, **configure_options: Any) -> None:
    """Run Alembic's current command for ``metadata``, offline (``--sql``) or online."""
    database_url = _database_url(url)
    if context.is_offline_mode():
        _configure(None, metadata, database_url, **configure_options)
        with context.begin_transaction():
            context.run_migrations()
        return
    asyncio.run(_run_online(metadata, database_url, configure_options))
