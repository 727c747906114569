"""An async Alembic environment in one call.

A project's ``alembic/env.py`` becomes::

    from aegis_shared.migrations import run_migrations
    from myapp.models import Base

    run_migrations(Base.metadata)

The URL comes from ``DATABASE_URL`` (through :class:`~aegis_shared.config.Settings`) unless
``sqlalchemy.url`` is set in ``alembic.ini`` or passed in. ``alembic revision
--autogenerate`` and ``alembic upgrade head`` then run through the same async driver as the
application, SQLite included (batch mode, so ALTERs work there).
"""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import context
from sqlalchemy import MetaData, pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from aegis_shared.database.urls import normalize_url


def _url(url: str | None) -> str:
    if url:
        return url
    configured = context.config.get_main_option("sqlalchemy.url")
    if configured:
        return configured
    from aegis_shared.config import Settings

    return Settings().database_url


def _configure(connection: Connection | None, metadata: MetaData, url: str, **extra: Any) -> None:
    options: dict[str, Any] = {
        "target_metadata": metadata,
        "compare_type": True,
        "render_as_batch": url.startswith("sqlite"),
    }
    options.update(extra)
    if connection is None:
        context.configure(url=url, literal_binds=True, **options)
    else:
        context.configure(connection=connection, **options)


def _run_sync(connection: Connection, metadata: MetaData, url: str, extra: dict[str, Any]) -> None:
    _configure(connection, metadata, url, **extra)
    with context.begin_transaction():
        context.run_migrations()


async def _run_online(metadata: MetaData, url: str, extra: dict[str, Any]) -> None:
    engine = create_async_engine(normalize_url(url), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_sync, metadata, url, extra)
    finally:
        await engine.dispose()


def run_migrations(metadata: MetaData, url: str | None = None, **configure_options: Any) -> None:
    """Run Alembic's current command for ``metadata``, offline (``--sql``) or online."""
    database_url = _url(url)
    if context.is_offline_mode():
        _configure(None, metadata, database_url, **configure_options)
        with context.begin_transaction():
            context.run_migrations()
        return
    asyncio.run(_run_online(metadata, database_url, configure_options))
