"""Build async engines whose errors all arrive as :mod:`aegis_shared.errors.exceptions`.

Three rules are enforced here, for every statement whatever API sent it (the ORM session,
``engine.begin()``, ``conn.commit()``):

* A connection lost (or timed out) while COMMIT was in flight is
  :class:`CommitOutcomeUnknownError`: the work may be saved, so it is never retried blindly.
* A cancellation (``asyncio.timeout``, a client that went away) reaches the caller as
  ``CancelledError`` itself, never as a database error; its connection is dropped.
* One broken connection is not a broken server: only that connection is replaced, and the
  others are checked for a closed link (no round trip) when they are next checked out.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Engine, ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import (
    AsyncAdaptedQueuePool,
    ConnectionPoolEntry,
    PoolProxiedConnection,
    StaticPool,
)

from aegis_shared.database.dialects import (
    DialectProfile,
    EngineOptions,
    merge_connect_args,
    profile_for,
)
from aegis_shared.database.urls import is_sqlite_memory
from aegis_shared.errors.exceptions import (
    CommitOutcomeUnknownError,
    DatabaseConnectionError,
    DatabaseError,
    PoolTimeoutError,
)
from aegis_shared.errors.mapping import is_client_timeout, translate_dbapi_error

#: Set on an error raised by a COMMIT that was sent (see _mark_commits).
_COMMIT_IN_FLIGHT = "_aegis_commit_in_flight"
#: What each engine was built with, for errors raised outside SQLAlchemy's execution.
_built: weakref.WeakKeyDictionary[Engine, tuple[EngineOptions, DialectProfile]] = (
    weakref.WeakKeyDictionary()
)
#: The connect_args each engine was built with (the profile's merged with the caller's).
_connect_args: weakref.WeakKeyDictionary[Engine, dict[str, Any]] = weakref.WeakKeyDictionary()


def driver_connect_kwargs(engine: AsyncEngine, url: URL | None = None) -> dict[str, Any]:
    """The keyword arguments the engine's driver ``connect`` gets for ``url`` (default:
    the engine's own): what SQLAlchemy takes from the URL and its query, then the engine's
    ``connect_args`` (TLS, server settings, timeouts), less what only SQLAlchemy's adapter
    understands. For a connection of the library's own outside the pool (the event hub's
    LISTEN), so that it connects the way the pool does, TLS included."""
    sync_engine = engine.sync_engine
    _, kwargs = sync_engine.dialect.create_connect_args(url or sync_engine.url)
    kwargs.update(_connect_args.get(sync_engine, {}))
    built = _built.get(sync_engine)
    if built is not None:
        for key in built[1].adapter_only_connect_args:
            kwargs.pop(key, None)
    return dict(kwargs)


def connect_timeout_error(options: EngineOptions, orig: BaseException) -> DatabaseConnectionError:
    """The error for a connect that got no answer within ``connect_timeout``."""
    return DatabaseConnectionError(
        f"The database did not answer a new connection within {options.connect_timeout:g}s "
        "(DATABASE_CONNECT_TIMEOUT). Check that it is running and reachable from here; "
        "transient failures are retried by @with_db_retry.",
        orig=orig,
    )


def command_timeout_error(options: EngineOptions, orig: BaseException) -> DatabaseConnectionError:
    """The error for a statement the server did not answer within ``command_timeout``."""
    return DatabaseConnectionError(
        f"The database did not answer within {options.command_timeout or 0:g}s "
        "(DATABASE_COMMAND_TIMEOUT), so the connection was given up: the network or the "
        "server stalled. Transient failures are retried by @with_db_retry; a statement that "
        "really needs longer wants a larger DATABASE_STATEMENT_TIMEOUT and "
        "DATABASE_COMMAND_TIMEOUT.",
        orig=orig,
    )


def commit_outcome_unknown(cause: DatabaseConnectionError) -> CommitOutcomeUnknownError:
    """``cause`` (the link lost during COMMIT) as the error that says so."""
    return CommitOutcomeUnknownError(
        "The connection was lost while COMMIT was in flight, so the work may or may not "
        f"have been saved ({cause.message}). Check before repeating it, or mark the "
        "operation idempotent (with_db_retry(idempotent=True)) if repeating it is safe.",
        orig=cause.orig,
    )


def _pool_class(options: EngineOptions) -> type[AsyncAdaptedQueuePool]:
    """The standard async queue pool, with its failures raised as our errors.

    A full pool and a failed connect are not statement errors, so SQLAlchemy's
    ``handle_error`` hook never sees them when the pool is used directly (the fast path's
    check-out, ``engine.raw_connection()``); the pool's public ``connect`` is the one place
    both can be caught. A class per engine carries ``options`` through ``pool.recreate()``.
    """

    class _TranslatingQueuePool(AsyncAdaptedQueuePool):
        def connect(self) -> PoolProxiedConnection:
            try:
                return super().connect()
            except sa_exc.TimeoutError as exc:
                raise PoolTimeoutError(
                    f"No database connection free after {self._timeout:g}s: all "
                    f"{self.size()} pooled connections and {self._max_overflow} overflow are "
                    "in use. Release sessions sooner, or raise DATABASE_POOL_SIZE / "
                    "DATABASE_MAX_OVERFLOW / DATABASE_POOL_TIMEOUT.",
                    orig=exc,
                ) from exc
            except DatabaseError:
                raise
            except Exception as exc:
                translated = _connect_error(options, exc)
                if translated is None:
                    raise  # not a database failure (MissingGreenlet from the fast path)
                raise translated from exc

    return _TranslatingQueuePool


def _connect_error(options: EngineOptions, exc: Exception) -> DatabaseError | None:
    if is_client_timeout(exc):
        return connect_timeout_error(options, exc)
    # A refused connect is a bare OSError for asyncpg; "starting up", "too many clients"
    # and a refused login arrive as the driver's errors.
    return translate_dbapi_error(exc, is_disconnect=isinstance(exc, OSError))


def _translator(options: EngineOptions) -> Any:
    def translate(context: ExceptionContext) -> BaseException | None:
        original = context.original_exception
        translated = translate_dbapi_error(original, is_disconnect=context.is_disconnect)
        if translated is None:
            # Includes CancelledError: SQLAlchemy counts it as a disconnect and drops the
            # connection, then re-raises it unchanged.
            return None
        if isinstance(translated, DatabaseConnectionError):
            if is_client_timeout(original):
                translated = command_timeout_error(options, original)
            # The driver said the link is gone (pg_terminate_backend's 57P01, a timeout)
            # even if SQLAlchemy's own check did not: invalidate it so the pool never hands
            # it out again. Only it: the other pooled connections are checked at check-out.
            context.is_disconnect = True
            context.invalidate_pool_on_disconnect = False
            if _commit_was_in_flight(original):
                translated = commit_outcome_unknown(translated)
        translated.__cause__ = context.sqlalchemy_exception or original
        if translated.statement is None and context.statement:
            # SQLAlchemy re-chains the result to the driver error, losing its own (which
            # holds the SQL): keep the statement for the server log.
            translated.statement = context.statement
        return translated

    return translate


def driver_failure(
    engine: AsyncEngine, error: Exception, dbapi_connection: Any
) -> DatabaseError | None:
    """Our error for ``error`` raised by a raw driver call (a fast read, a COPY) on
    ``dbapi_connection`` from ``engine``'s pool, or ``None`` if it has none.

    The same reading as for statements SQLAlchemy runs: a link the driver knows is closed,
    an ``OSError`` or a command timeout is a :class:`DatabaseConnectionError`, and the
    caller must then invalidate the connection rather than return it to the pool.
    """
    options, profile = _built.get(engine.sync_engine) or (EngineOptions(), DialectProfile())
    if is_client_timeout(error):
        return command_timeout_error(options, error)
    broken = isinstance(error, OSError) or profile.is_closed(dbapi_connection)
    return translate_dbapi_error(error, is_disconnect=broken)


def _mark_commits(dialect: Any, profile: DialectProfile) -> None:
    """Wrap ``dialect.do_commit`` so that an error raised by a COMMIT that was sent is
    marked as such for the ``handle_error`` hook (see :func:`_translator`).

    Why here and not with the engine's ``commit`` event: every COMMIT passes through the
    dialect, whatever API sent it, and this adds nothing to other statements, while any
    connection-level listener makes SQLAlchemy dispatch events on every connection and
    statement of the engine.
    """
    commit = dialect.do_commit

    def do_commit(dbapi_connection: Any) -> None:
        # A link the driver already knows is closed cannot carry the COMMIT: it fails
        # before anything is sent, so the transaction is known not to be saved (the server
        # rolls back a transaction whose connection is gone) and may safely be retried.
        sent = not profile.is_closed(dbapi_connection)
        try:
            commit(dbapi_connection)
        except BaseException as exc:
            if sent and not profile.refused_before_sending(exc):
                with contextlib.suppress(AttributeError, TypeError):
                    setattr(exc, _COMMIT_IN_FLIGHT, True)
            raise

    dialect.do_commit = do_commit


def _commit_was_in_flight(error: BaseException) -> bool:
    """True (once) when ``error`` came from a COMMIT that reached the wire."""
    if not getattr(error, _COMMIT_IN_FLIGHT, False):
        return False
    with contextlib.suppress(AttributeError):
        delattr(error, _COMMIT_IN_FLIGHT)
    return True


def _liveness_check(profile: DialectProfile) -> Any:
    def refuse_closed(
        dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
    ) -> None:
        # A connection the server closed while it sat in the pool (its backend killed, a
        # restart) is replaced here, before anyone runs a statement on it: SQLAlchemy
        # invalidates it and connects anew when a check-out listener raises this.
        if profile.is_closed(dbapi_connection):
            raise sa_exc.DisconnectionError("the server closed this pooled connection")

    return refuse_closed


def build_engine(
    url: URL,
    *,
    pool_size: int,
    max_overflow: int,
    pool_timeout: float,
    pool_recycle: int,
    pool_pre_ping: bool = False,
    echo: bool = False,
    options: EngineOptions | None = None,
    connect_args: dict[str, Any] | None = None,
    engine_kwargs: dict[str, Any] | None = None,
) -> AsyncEngine:
    """Create an ``AsyncEngine`` for ``url`` with the backend's profile and error translation."""
    options = options or EngineOptions()
    profile = profile_for(url)
    kwargs: dict[str, Any] = {"echo": echo, "pool_pre_ping": pool_pre_ping}
    kwargs.update(profile.engine_kwargs())
    if is_sqlite_memory(url):
        # Every connection to :memory: is a new, empty database: keep exactly one.
        kwargs["poolclass"] = StaticPool
    else:
        kwargs.update(
            poolclass=_pool_class(options),
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=pool_timeout,
            pool_recycle=pool_recycle,
            # Last in, first out: a quiet period is served by the few most recently used
            # connections (their server processes still warm), not round-robin over all.
            pool_use_lifo=True,
        )
    kwargs["connect_args"] = merge_connect_args(profile.connect_args(url, options), connect_args)
    kwargs.update(engine_kwargs or {})
    engine = create_async_engine(url, **kwargs)
    sync_engine = engine.sync_engine
    event.listen(sync_engine, "handle_error", _translator(options), retval=True)
    _mark_commits(sync_engine.dialect, profile)
    event.listen(sync_engine, "checkout", _liveness_check(profile))
    profile.install(engine, url, options)
    _built[sync_engine] = (options, profile)
    _connect_args[sync_engine] = dict(kwargs["connect_args"])
    return engine
