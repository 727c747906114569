"""Build async engines whose errors all arrive as :mod:`aegis_shared.errors.exceptions`."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, PoolProxiedConnection, StaticPool

from aegis_shared.database.dialects import EngineOptions, profile_for
from aegis_shared.database.urls import is_sqlite_memory
from aegis_shared.errors.exceptions import DatabaseConnectionError, PoolTimeoutError
from aegis_shared.errors.mapping import translate_dbapi_error


class _TranslatingQueuePool(AsyncAdaptedQueuePool):
    """The standard async queue pool, with its timeout raised as :class:`PoolTimeoutError`.

    A full pool is not a driver error, so SQLAlchemy's ``handle_error`` hook never sees it;
    the pool's public ``connect`` is the one place it can be caught.
    """

    def connect(self) -> PoolProxiedConnection:
        try:
            return super().connect()
        except sa_exc.TimeoutError as exc:
            raise PoolTimeoutError(
                f"No database connection free after {self._timeout:g}s: all {self.size()} "
                f"pooled connections and {self._max_overflow} overflow are in use. "
                "Release sessions sooner, or raise DATABASE_POOL_SIZE / DATABASE_MAX_OVERFLOW / "
                "DATABASE_POOL_TIMEOUT.",
                orig=exc,
            ) from exc
        except OSError as exc:
            # asyncpg reports a refused or timed-out connect as a bare OSError, which is no
            # DBAPI error, so the handle_error hook never sees it.
            translated = translate_dbapi_error(exc, is_disconnect=True)
            assert translated is not None
            raise translated from exc


def _translate(context: ExceptionContext) -> BaseException | None:
    translated = translate_dbapi_error(
        context.original_exception, is_disconnect=context.is_disconnect
    )
    if translated is None:
        return None
    if isinstance(translated, DatabaseConnectionError) and not context.is_disconnect:
        # The driver said the link is gone (for example pg_terminate_backend's 57P01) even
        # if SQLAlchemy's own check did not: invalidate it so the pool never hands it out.
        context.is_disconnect = True
    translated.__cause__ = context.sqlalchemy_exception or context.original_exception
    return translated


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
            poolclass=_TranslatingQueuePool,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=pool_timeout,
            pool_recycle=pool_recycle,
            # Last in, first out: a quiet period is served by the few most recently used
            # connections (their server processes still warm), not round-robin over all.
            pool_use_lifo=True,
        )
    kwargs["connect_args"] = {**profile.connect_args(url, options), **(connect_args or {})}
    kwargs.update(engine_kwargs or {})
    engine = create_async_engine(url, **kwargs)
    event.listen(engine.sync_engine, "handle_error", _translate, retval=True)
    profile.install(engine, url, options)
    return engine
