"""``DatabaseManager``: the engines, the two pools and the standalone session (seed 001)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy import MetaData, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.pool import Pool

from aegis_shared.database.dialects import EngineOptions
from aegis_shared.database.engine import build_engine
from aegis_shared.database.fast_path import (
    FAST_PATH_ENGINE_KEY,
    FAST_READ_ROUTER_KEY,
    pin_server,
)
from aegis_shared.database.replicas import Replica, ReplicaSet, read_after
from aegis_shared.database.repository import MAX_PAGE_SIZE_KEY
from aegis_shared.database.session import (
    ON_REPLICA_KEY,
    AegisSession,
    declare_read_only,
    rollback_quietly,
)
from aegis_shared.database.urls import is_sqlite_memory, normalize_url, safe_url
from aegis_shared.database.write_intent import declare_write
from aegis_shared.errors.exceptions import (
    ConfigurationError,
    DatabaseError,
    DatabaseManagerClosedError,
)

if TYPE_CHECKING:
    from aegis_shared.config import Settings

logger = logging.getLogger("aegis_shared.database")


def _check(name: str, value: float | None, minimum: float) -> None:
    if value is None or isinstance(value, bool) or value < minimum:
        raise ConfigurationError(
            f"DatabaseManager({name}={value!r}) is invalid: it must be a number >= {minimum:g}"
        )


#: Client-side command timeout when none is set: the server's statement timeout plus this
#: margin (so the server cancels a slow statement first), or the fallback without one.
COMMAND_TIMEOUT_MARGIN = 5.0
COMMAND_TIMEOUT_FALLBACK = 60.0


def _command_timeout(command_timeout: float | None, statement_timeout: float | None) -> float:
    if command_timeout is None:
        if statement_timeout is None:
            return COMMAND_TIMEOUT_FALLBACK
        return statement_timeout + COMMAND_TIMEOUT_MARGIN
    _check("command_timeout", command_timeout, 0.001)
    if statement_timeout is not None and command_timeout <= statement_timeout:
        raise ConfigurationError(
            f"DatabaseManager(command_timeout={command_timeout!r}) must be longer than "
            f"statement_timeout={statement_timeout!r}: the server should cancel a slow "
            "statement before the client gives up on the connection. Raise "
            "DATABASE_COMMAND_TIMEOUT, or leave it unset."
        )
    return command_timeout


class DatabaseManager:
    """Owns the connection pools of one database and hands out sessions.

    >>> db = DatabaseManager(database_url="postgresql+asyncpg://user:pw@localhost/app",
    ...                      pool_size=20, max_overflow=10, pool_timeout=30)
    >>> async with db.session() as session:   # commits on success, rolls back on error
    ...     await session.execute("SELECT 1")
    >>> await db.close()

    Background work (``BackgroundUnitOfWork``, ``get_background_session``) draws from a
    second, smaller pool, so it still runs while request traffic holds every main
    connection.
    """

    def __init__(
        self,
        database_url: str | URL,
        pool_size: int = 20,
        max_overflow: int = 10,
        pool_timeout: float = 30,
        pool_recycle: int = 3600,
        *,
        pool_pre_ping: bool = False,
        echo: bool = False,
        background_pool_size: int = 5,
        background_max_overflow: int = 0,
        statement_timeout: float | None = None,
        connect_timeout: float = 10.0,
        command_timeout: float | None = None,
        retry_attempts: int = 6,
        retry_backoff: float = 2.0,
        retry_base_delay: float = 0.2,
        retry_max_delay: float = 2.0,
        retry_deadline: float | None = 30.0,
        max_page_size: int = 1000,
        prepared_statement_cache_size: int | None = None,
        prepared_statements: bool = True,
        pgbouncer: bool = False,
        direct_url: str | URL | None = None,
        replica_urls: Sequence[str | URL] = (),
        replica_max_lag: float = 5.0,
        replica_check_interval: float = 0.25,
        fast_path: bool = True,
        connect_args: dict[str, Any] | None = None,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        _check("pool_size", pool_size, 1)
        _check("max_overflow", max_overflow, 0)
        _check("pool_timeout", pool_timeout, 0.001)
        _check("pool_recycle", pool_recycle, -1)
        _check("background_pool_size", background_pool_size, 1)
        _check("background_max_overflow", background_max_overflow, 0)
        _check("retry_attempts", retry_attempts, 1)
        _check("retry_backoff", retry_backoff, 1)
        _check("max_page_size", max_page_size, 1)
        _check("connect_timeout", connect_timeout, 0.001)
        _check("retry_base_delay", retry_base_delay, 0)
        _check("retry_max_delay", retry_max_delay, retry_base_delay)
        if retry_deadline is not None:
            _check("retry_deadline", retry_deadline, 0.001)
        if statement_timeout is not None:
            _check("statement_timeout", statement_timeout, 0.001)
        command_timeout = _command_timeout(command_timeout, statement_timeout)
        self.url = normalize_url(database_url)
        if not isinstance(pgbouncer, bool):
            raise ConfigurationError(f"pgbouncer takes True or False, got {pgbouncer!r}")
        if pgbouncer and self.url.get_backend_name() != "postgresql":
            raise ConfigurationError(
                f"pgbouncer=True (DATABASE_PGBOUNCER) is for PostgreSQL behind pgbouncer; "
                f"this is {self.url.get_backend_name()}. Leave it out."
            )
        #: True when the URL is a transaction pooler (pgbouncer): see docs/guide.md,
        #: "Deploying". No prepared statement outlives a transaction, the statement
        #: timeout is SET LOCAL per transaction, and session-scoped work goes to
        #: :attr:`direct_url`.
        self.pgbouncer = pgbouncer
        #: The server itself, without a transaction pooler (``DATABASE_DIRECT_URL``), for
        #: session-scoped work such as the event hub's LISTEN; ``None``: :attr:`url`.
        self.direct_url = (
            None if direct_url is None else normalize_url(direct_url, "DATABASE_DIRECT_URL")
        )
        if (
            self.direct_url is not None
            and self.direct_url.get_backend_name() != self.url.get_backend_name()
        ):
            raise ConfigurationError(
                f"DATABASE_DIRECT_URL is a {self.direct_url.get_backend_name()} URL but "
                f"DATABASE_URL is {self.url.get_backend_name()}: the direct URL must reach "
                "the same database without the pooler in between."
            )
        self.retry_attempts = retry_attempts
        self.retry_backoff = retry_backoff
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay
        self.retry_deadline = retry_deadline
        #: Seconds a new connection may take, and the client waits for any answer (the
        #: resolved value when ``command_timeout`` was left out); see docs/guide.md.
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.max_page_size = max_page_size
        self.fast_path = fast_path
        self._closed = False
        options = EngineOptions(
            statement_timeout=statement_timeout,
            connect_timeout=connect_timeout,
            command_timeout=command_timeout,
            sqlite_busy_timeout=max(float(pool_timeout), 5.0),
            prepared_statement_cache_size=prepared_statement_cache_size,
            # Behind pgbouncer a named statement may land on another server connection.
            prepared_statements=prepared_statements and not pgbouncer,
            pgbouncer=pgbouncer,
        )
        common: dict[str, Any] = {
            "pool_timeout": pool_timeout,
            "pool_recycle": pool_recycle,
            "pool_pre_ping": pool_pre_ping,
            "echo": echo,
            "options": options,
            "connect_args": connect_args,
            "engine_kwargs": engine_kwargs,
        }
        self._engine = build_engine(
            self.url, pool_size=pool_size, max_overflow=max_overflow, **common
        )
        if is_sqlite_memory(self.url):
            # A second engine would open a second, empty in-memory database.
            self._background_engine = self._engine
        else:
            self._background_engine = build_engine(
                self.url,
                pool_size=background_pool_size,
                max_overflow=background_max_overflow,
                **common,
            )
        #: Seconds a replica may lag before reads skip it (``DATABASE_REPLICA_MAX_LAG``).
        self.replica_max_lag = replica_max_lag
        self._replicas = self._replica_set(
            replica_urls,
            replica_max_lag,
            replica_check_interval,
            pool_size=pool_size,
            max_overflow=max_overflow,
            common=common,
        )
        # With replicas, the fast reads of a session outside a transaction may go to one
        # (fast_path.run); background sessions write logs and jobs, and stay put.
        self._sessions = self._sessionmaker(self._engine, route=self._replicas is not None)
        self._background_sessions = self._sessionmaker(self._background_engine)

    def _replica_set(
        self,
        urls: Sequence[str | URL],
        max_lag: float,
        check_interval: float,
        *,
        pool_size: int,
        max_overflow: int,
        common: dict[str, Any],
    ) -> ReplicaSet | None:
        if isinstance(urls, str | URL):
            urls = [urls]
        if not urls:
            return None
        _check("replica_max_lag", max_lag, 0.001)
        _check("replica_check_interval", check_interval, 0.001)
        parsed = [normalize_url(url, "DATABASE_REPLICA_URLS") for url in urls]
        if self.url.get_backend_name() != "postgresql" or any(
            url.get_backend_name() != "postgresql" for url in parsed
        ):
            raise ConfigurationError(
                "Replicas (DATABASE_REPLICA_URLS) are PostgreSQL streaming standbys of a "
                "PostgreSQL primary; leave them out for "
                f"{self.url.get_backend_name()}."
            )
        replicas = []
        for index, url in enumerate(parsed):
            engine = build_engine(url, pool_size=pool_size, max_overflow=max_overflow, **common)
            replicas.append(Replica(index, url, engine, self._sessionmaker(engine, replica=True)))
        return ReplicaSet(
            primary=self._engine,
            replicas=replicas,
            max_lag=max_lag,
            check_interval=check_interval,
            check_timeout=min(1.0, self.connect_timeout),
        )

    @property
    def fast_read_engine(self) -> AsyncEngine | None:
        """The engine lean reads run on (see ``fast_path``), or ``None`` when they are off:
        ``fast_path=False``, or in-memory SQLite, whose one connection an open transaction
        may be using."""
        return self.engine if self._fast_reads_on() else None

    def _fast_reads_on(self) -> bool:
        # In-memory SQLite has one connection for everyone: a fast read would borrow (and
        # on return reset) the one an open transaction is using.
        return self.fast_path and not is_sqlite_memory(self.url)

    def _sessionmaker(
        self, engine: AsyncEngine, *, replica: bool = False, route: bool = False
    ) -> async_sessionmaker[AegisSession]:
        # expire_on_commit=False: objects stay readable after commit without a lazy
        # refresh, which async code cannot do. close_resets_only=False: a closed session
        # refuses further use instead of silently opening a new connection.
        info: dict[str, Any] = {MAX_PAGE_SIZE_KEY: self.max_page_size}
        if replica:
            info[ON_REPLICA_KEY] = True
        if self._fast_reads_on():
            info[FAST_PATH_ENGINE_KEY] = engine
            if route:
                info[FAST_READ_ROUTER_KEY] = self._fast_read_replica
        return async_sessionmaker(
            engine,
            class_=AegisSession,
            expire_on_commit=False,
            autoflush=True,
            close_resets_only=False,
            info=info,
        )

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **overrides: Any) -> DatabaseManager:
        """Build a manager from :class:`~aegis_shared.config.Settings` (or the environment)."""
        if settings is None:
            from aegis_shared.config import Settings

            settings = Settings()
        values: dict[str, Any] = {
            "database_url": settings.database_url,
            "pool_size": settings.database_pool_size,
            "max_overflow": settings.database_max_overflow,
            "pool_timeout": settings.database_pool_timeout,
            "pool_recycle": settings.database_pool_recycle,
            "pool_pre_ping": settings.database_pool_pre_ping,
            "echo": settings.database_echo,
            "background_pool_size": settings.database_background_pool_size,
            "background_max_overflow": settings.database_background_max_overflow,
            "statement_timeout": settings.database_statement_timeout,
            "connect_timeout": settings.database_connect_timeout,
            "command_timeout": settings.database_command_timeout,
            "retry_attempts": settings.database_retry_attempts,
            "retry_backoff": settings.database_retry_backoff,
            "retry_base_delay": settings.database_retry_base_delay,
            "retry_max_delay": settings.database_retry_max_delay,
            "retry_deadline": settings.database_retry_deadline,
            "max_page_size": settings.database_max_page_size,
            "prepared_statements": settings.database_prepared_statements,
            "pgbouncer": settings.database_pgbouncer,
            "direct_url": settings.database_direct_url,
            "replica_urls": settings.database_replica_urls,
            "replica_max_lag": settings.database_replica_max_lag,
            "fast_path": settings.database_fast_path,
        }
        values.update(overrides)
        return cls(**values)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<DatabaseManager {safe_url(self.url)} ({state})>"

    # -- engines and session factories -------------------------------------------------

    def _ensure_open(self) -> None:
        if self._closed:
            raise DatabaseManagerClosedError(
                f"{self!r} was closed with close() and cannot hand out sessions. Create a "
                "new DatabaseManager (and configure_database() it) instead of reusing this one."
            )

    @property
    def dialect_name(self) -> str:
        """``postgresql``, ``sqlite`` or ``mysql`` (MariaDB)."""
        return self._engine.dialect.name

    @property
    def engine(self) -> AsyncEngine:
        """The engine of the main pool."""
        self._ensure_open()
        return self._engine

    @property
    def background_engine(self) -> AsyncEngine:
        """The engine of the background pool."""
        self._ensure_open()
        return self._background_engine

    @property
    def session_factory(self) -> async_sessionmaker[AegisSession]:
        """Factory of sessions on the main pool (the caller owns what it opens)."""
        self._ensure_open()
        return self._sessions

    @property
    def background_session_factory(self) -> async_sessionmaker[AegisSession]:
        """Factory of sessions on the background pool."""
        self._ensure_open()
        return self._background_sessions

    # -- standalone sessions ------------------------------------------------------------

    @asynccontextmanager
    async def session(
        self, *, write: bool = False, read_only: bool = False
    ) -> AsyncIterator[AegisSession]:
        """A session that commits when the block ends normally, rolls back when it raises,
        and is always closed (seed 001).

        ``write=True`` for a block that reads and then writes: its transaction begins as a
        write transaction (``BEGIN IMMEDIATE`` on SQLite), see ``UnitOfWork(write=True)``.
        ``read_only=True`` for a block that only reads: with ``replica_urls`` it reads on a
        healthy replica that has this context's own writes (see
        :mod:`~aegis_shared.database.replicas`), else on the primary.
        """
        if read_only and write:
            raise ValueError("a session is read_only=True or write=True, not both")
        self.start_replica_monitor()
        factory = await self.read_factory() if read_only else self.session_factory
        async with self._scoped(factory, write, read_only) as session:
            yield session

    def start_replica_monitor(self) -> None:
        """Start watching the replicas now (call it in the app's lifespan; any session
        of this manager, or the first read-only one, starts it otherwise). A replica
        serves a client that wrote only once a sample taken after the write shows it
        caught up, so a monitor that starts late sends those reads to the primary longer."""
        if self._replicas is not None:
            self._ensure_open()
            self._replicas.start()

    @property
    def has_replicas(self) -> bool:
        """True when the manager was given ``replica_urls``."""
        return self._replicas is not None

    async def read_factory(self) -> async_sessionmaker[AegisSession]:
        """The factory of a read-only session: a healthy replica's that has this
        context's writes (:func:`~aegis_shared.database.replicas.read_after`), else the
        primary's (also without replicas)."""
        self._ensure_open()
        if self._replicas is None:
            return self._sessions
        replica = await self._replicas.choose(read_after())
        return self._sessions if replica is None else replica.sessions

    async def _fast_read_replica(self) -> AsyncEngine | None:
        """The engine of a replica that has this context's writes, for a session's fast
        reads outside a transaction; ``None``: the primary."""
        assert self._replicas is not None
        replica = await self._replicas.choose(read_after())
        return None if replica is None else replica.engine

    @asynccontextmanager
    async def background_session(self, *, write: bool = False) -> AsyncIterator[AegisSession]:
        """Like :meth:`session`, on the background pool."""
        async with self._scoped(self.background_session_factory, write) as session:
            yield session

    @staticmethod
    @asynccontextmanager
    async def _scoped(
        factory: async_sessionmaker[AegisSession], write: bool, read_only: bool = False
    ) -> AsyncIterator[AegisSession]:
        session = factory()
        if write:
            declare_write(session)
        if read_only:
            declare_read_only(session)
            pin_server(session)  # it chose its server already (read_factory)
        try:
            yield session
        except BaseException:
            await rollback_quietly(session)
            raise
        else:
            await session.commit()
        finally:
            await session.close()

    # -- maintenance ----------------------------------------------------------------------

    async def create_all(self, metadata: MetaData) -> None:
        """Create the tables of ``metadata`` that do not exist yet (for demos and tests;
        use Alembic migrations in production)."""
        async with self.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)

    async def drop_all(self, metadata: MetaData) -> None:
        """Drop the tables of ``metadata`` that exist."""
        async with self.engine.begin() as conn:
            await conn.run_sync(metadata.drop_all)

    async def health_check(self) -> bool:
        """True when a connection can be taken from the main pool and ``SELECT 1`` answers.

        Never raises for an unreachable database: a health endpoint wants a yes or no.
        """
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except (DatabaseError, SQLAlchemyError, OSError) as exc:
            logger.warning("database health check failed: %s", exc)
            return False
        return True

    def pool_status(self) -> dict[str, dict[str, int]]:
        """Size, checked-out and overflow connections of the main and background pools;
        with replicas, each replica's pool, health (``healthy`` 0/1, ``lag_ms``) and the
        read-only sessions and stretches of fast reads routed to it (``reads``; those the
        primary answered instead: ``read_only_sessions`` of ``main``)."""
        status = {
            "main": _pool_figures(self._engine.pool),
            "background": _pool_figures(self._background_engine.pool),
        }
        if self._replicas is not None:
            routing = self._replicas.status()
            for replica in self._replicas.replicas:
                status[replica.name] = {
                    **_pool_figures(replica.engine.pool),
                    **routing[replica.name],
                }
            status["main"]["read_only_sessions"] = self._replicas.primary_reads
        return status

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    async def close(self) -> None:
        """Close every pooled connection of both pools; the manager cannot be used after."""
        if self._closed:
            return
        self._closed = True
        await self._engine.dispose()
        if self._background_engine is not self._engine:
            await self._background_engine.dispose()
        if self._replicas is not None:
            await self._replicas.close()


def _pool_figures(pool: Pool) -> dict[str, int]:
    def figure(name: str) -> int:
        method = getattr(pool, name, None)
        return int(method()) if callable(method) else 0

    return {
        "size": figure("size"),
        "checked_out": figure("checkedout"),
        "checked_in": figure("checkedin"),
        "overflow": max(figure("overflow"), 0),
    }
