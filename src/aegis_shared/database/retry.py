"""``@with_db_retry``: run a whole database operation again after a transient failure."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, overload

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from aegis_shared.database.registry import peek_database
from aegis_shared.errors.exceptions import (
    CommitOutcomeUnknownError,
    ConfigurationError,
    DatabaseConnectionError,
    TransactionConflictError,
)

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger("aegis_shared.database.retry")


def is_retryable(error: BaseException, *, idempotent: bool = False) -> bool:
    """True for failures that a fresh attempt can cure.

    Connection failures and transaction conflicts are; integrity errors never are (the
    same data would fail again). A lost COMMIT (:class:`CommitOutcomeUnknownError`) may
    already have saved the work, so it is retried only when repeating it is safe.
    """
    if isinstance(error, CommitOutcomeUnknownError):
        return idempotent
    return isinstance(error, (DatabaseConnectionError, TransactionConflictError))


def _validate(max_attempts: int | None, backoff_factor: float | None) -> None:
    if max_attempts is not None and (
        isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1
    ):
        raise ConfigurationError(f"max_attempts must be a whole number >= 1, got {max_attempts!r}")
    if backoff_factor is not None and backoff_factor < 1:
        raise ConfigurationError(f"backoff_factor must be >= 1, got {backoff_factor!r}")


def _log_retry(name: str) -> Callable[[RetryCallState], None]:
    def log(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        logger.warning(
            "%s failed on attempt %d (%s: %s); retrying in %.2fs",
            name,
            state.attempt_number,
            type(error).__name__,
            error,
            delay,
        )

    return log


@overload
def with_db_retry(func: Callable[P, Awaitable[R]], /) -> Callable[P, Awaitable[R]]: ...


@overload
def with_db_retry(
    *,
    max_attempts: int | None = None,
    backoff_factor: float | None = None,
    base_delay: float = 0.05,
    max_delay: float = 5.0,
    idempotent: bool = False,
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]: ...


def with_db_retry(
    func: Callable[P, Awaitable[R]] | None = None,
    /,
    *,
    max_attempts: int | None = None,
    backoff_factor: float | None = None,
    base_delay: float = 0.05,
    max_delay: float = 5.0,
    idempotent: bool = False,
) -> Any:
    """Retry the decorated coroutine on connection failures and transaction conflicts.

    >>> @with_db_retry(max_attempts=3, backoff_factor=2)
    ... async def create_user_with_retry(user_data: dict) -> User:
    ...     async with db_manager.session() as session:
    ...         return await UserRepository(session).create(User(**user_data))

    The whole coroutine runs again, so open the session inside it: each attempt then gets
    a fresh session and transaction. Waits grow by ``backoff_factor`` from ``base_delay``
    up to ``max_delay``, with full jitter so that colliding transactions spread out. When
    the attempts run out the last error is raised (``DatabaseConnectionError`` for a
    connection failure), chained to its driver cause. ``idempotent=True`` also retries a
    COMMIT whose outcome is unknown. Left out, ``max_attempts`` and ``backoff_factor``
    come from the default manager (``DATABASE_RETRY_ATTEMPTS``, ``DATABASE_RETRY_BACKOFF``)
    when the call runs, else 3 and 2.
    """
    if func is not None:
        return with_db_retry()(func)
    _validate(max_attempts, backoff_factor)
    if base_delay < 0 or max_delay < base_delay:
        raise ConfigurationError("need 0 <= base_delay <= max_delay")

    def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"with_db_retry decorates async functions; {fn!r} is not one")
        name = getattr(fn, "__qualname__", repr(fn))

        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            default = peek_database()
            attempts = max_attempts or (default.retry_attempts if default else 3)
            factor = backoff_factor or (default.retry_backoff if default else 2.0)
            retrying = AsyncRetrying(
                stop=stop_after_attempt(attempts),
                wait=wait_random_exponential(multiplier=base_delay, exp_base=factor, max=max_delay),
                retry=retry_if_exception(lambda e: is_retryable(e, idempotent=idempotent)),
                before_sleep=_log_retry(name),
                reraise=True,
            )
            async for attempt in retrying:
                with attempt:
                    return await fn(*args, **kwargs)
            raise AssertionError("unreachable: tenacity re-raises the last failure")

        return wrapper

    return decorate
