"""The default :class:`DatabaseManager`, for code that takes none (``UnitOfWork()``,
``get_session``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aegis_shared.errors.exceptions import DatabaseNotConfiguredError

if TYPE_CHECKING:
    from aegis_shared.config import Settings
    from aegis_shared.database.manager import DatabaseManager

_default: DatabaseManager | None = None


def configure_database(
    manager: DatabaseManager | None = None, *, settings: Settings | None = None
) -> DatabaseManager:
    """Make ``manager`` (or one built from ``settings``, or from the environment) the default.

    Call it once at start-up, for FastAPI in the app's lifespan, and ``await db.close()`` at
    shutdown. Returns the manager now in use.
    """
    global _default
    if manager is None:
        from aegis_shared.config import Settings
        from aegis_shared.database.manager import DatabaseManager

        manager = DatabaseManager.from_settings(settings or Settings())
    _default = manager
    return manager


def get_database() -> DatabaseManager:
    """The default manager; raises :class:`DatabaseNotConfiguredError` if none is set."""
    if _default is None:
        raise DatabaseNotConfiguredError(
            "No default DatabaseManager is configured, so UnitOfWork() and get_session have "
            "no database to use. At start-up (for FastAPI, in the lifespan) call "
            "aegis_shared.database.configure_database(DatabaseManager(database_url=...)), or "
            "configure_database() to build one from DATABASE_URL."
        )
    return _default


def peek_database() -> DatabaseManager | None:
    """The default manager, or ``None`` when none is configured."""
    return _default


def reset_database() -> DatabaseManager | None:
    """Forget the default manager (without closing it) and return it; for tests and shutdown."""
    global _default
    previous, _default = _default, None
    return previous
