"""Normalise database URLs to their async drivers."""

from __future__ import annotations

from sqlalchemy.engine import URL

from aegis_shared.errors.exceptions import ConfigurationError
from aegis_shared.errors.redaction import mask_url, parse_url

# Plain URLs name a sync driver; a web service wants the async one, so we pick it rather
# than fail deep inside SQLAlchemy with "the loaded 'psycopg2' is not async".
_ASYNC_DRIVERS = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+psycopg2": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+pysqlite": "sqlite+aiosqlite",
    "mysql": "mysql+asyncmy",
    "mysql+pymysql": "mysql+asyncmy",
    "mariadb": "mysql+asyncmy",
    "mariadb+pymysql": "mysql+asyncmy",
    "mariadb+asyncmy": "mysql+asyncmy",
    "mariadb+aiomysql": "mysql+aiomysql",
}
_SUPPORTED = ("postgresql+asyncpg", "sqlite+aiosqlite", "mysql+asyncmy", "mysql+aiomysql")


def normalize_url(url: str | URL, source: str = "DATABASE_URL") -> URL:
    """Parse ``url`` and give it an async driver; raise ``ConfigurationError`` if unusable.

    ``source`` names where the value came from, for the error message.
    """
    parsed = parse_url(url, source)
    name = _ASYNC_DRIVERS.get(parsed.drivername, parsed.drivername)
    if name not in _SUPPORTED:
        raise ConfigurationError(
            f"{source} uses driver {parsed.drivername!r}, which aegis-shared does not "
            f"support; use one of {', '.join(_SUPPORTED)}"
        )
    return parsed.set(drivername=name)


def is_sqlite_memory(url: URL) -> bool:
    """True for SQLite URLs whose database lives only in memory (one per connection)."""
    database = url.database or ""
    return url.get_backend_name() == "sqlite" and (
        database in ("", ":memory:") or "mode=memory" in str(url.query.get("mode", ""))
    )


def safe_url(url: URL) -> str:
    """The URL with its password hidden, for messages and logs."""
    return mask_url(url)
