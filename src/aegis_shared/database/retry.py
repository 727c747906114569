"""``@with_db_retry``: run a whole database operation again after a transient failure."""

from __future__ import annotations

import functools
import inspect
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, overload

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
)

from aegis_shared.database.registry import peek_database
from aegis_shared.errors.exceptions import (
    CommitOutcomeUnknownError,
    ConfigurationError,
    ConflictRetriesExhaustedError,
    DatabaseConnectionError,
    DatabaseLoginError,
    TransactionConflictError,
)

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger("aegis_shared.database.retry")

#: Defaults when neither the decorator nor a default manager says otherwise. Sized so that
#: the waits alone add up to at least 2.5 s (and at most 5 s) before the last attempt: a
#: server restart or a pgbouncer reconnect of 1-2 s is ridden out, a conflict is retried
#: after 0.1-0.2 s.
DEFAULT_ATTEMPTS = 6
DEFAULT_BACKOFF = 2.0
DEFAULT_BASE_DELAY = 0.2
DEFAULT_MAX_DELAY = 2.0
DEFAULT_DEADLINE = 30.0


def is_retryable(error: BaseException, *, idempotent: bool = False) -> bool:
    """True for failures that a fresh attempt can cure.

    Connection failures and transaction conflicts are; integrity errors never are (the
    same data would fail again), nor a refused login (a wrong password, a missing
    database), nor a cancellation. A lost COMMIT (:class:`CommitOutcomeUnknownError`) may
    already have saved the work, so it is retried only when repeating it is safe.
    """
    if isinstance(error, CommitOutcomeUnknownError):
        return idempotent
    if isinstance(error, DatabaseLoginError):
        return False
    return isinstance(error, (DatabaseConnectionError, TransactionConflictError))


class _HalfJitterWait:
    """Exponential backoff with "equal jitter": each wait is between half and all of
    ``base * factor ** (attempt - 1)`` (capped at ``cap``).

    Why not tenacity's ``wait_random_exponential`` (full jitter): its waits can all come
    out near zero, so a call could give up within a fraction of a second of a restart that
    lasts two. Half the wait is guaranteed; the random half still spreads colliding
    transactions apart.
    """

    def __init__(self, base: float, factor: float, cap: float) -> None:
        self.base, self.factor, self.cap = base, factor, cap

    def __call__(self, state: RetryCallState) -> float:
        ceiling = min(self.cap, self.base * self.factor ** (state.attempt_number - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


def _validate(
    max_attempts: int | None,
    backoff_factor: float | None,
    base_delay: float | None,
    max_delay: float | None,
    deadline: float | None,
) -> None:
    if max_attempts is not None and (
        isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1
    ):
        raise ConfigurationError(f"max_attempts must be a whole number >= 1, got {max_attempts!r}")
    if backoff_factor is not None and backoff_factor < 1:
        raise ConfigurationError(f"backoff_factor must be >= 1, got {backoff_factor!r}")
    if base_delay is not None and base_delay < 0:
        raise ConfigurationError(f"base_delay must be >= 0, got {base_delay!r}")
    if max_delay is not None and max_delay < (base_delay or 0):
        raise ConfigurationError("need 0 <= base_delay <= max_delay")
    if deadline is not None and deadline <= 0:
        raise ConfigurationError(f"deadline must be > 0 seconds, got {deadline!r}")


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
    base_delay: float | None = None,
    max_delay: float | None = None,
    deadline: float | None = None,
    idempotent: bool = False,
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]: ...


def with_db_retry(
    func: Callable[P, Awaitable[R]] | None = None,
    /,
    *,
    max_attempts: int | None = None,
    backoff_factor: float | None = None,
    base_delay: float | None = None,
    max_delay: float | None = None,
    deadline: float | None = None,
    idempotent: bool = False,
) -> Any:
    """Retry the decorated coroutine on connection failures and transaction conflicts.

    >>> @with_db_retry(max_attempts=3, backoff_factor=2)
    ... async def create_user_with_retry(user_data: dict) -> User:
    ...     async with db_manager.session() as session:
    ...         return await UserRepository(session).create(User(**user_data))

    The whole coroutine runs again, so open the session inside it: each attempt then gets
    a fresh session and transaction. The n-th wait is between half and all of
    ``base_delay * backoff_factor ** (n - 1)``, capped at ``max_delay``; no attempt starts
    once ``deadline`` seconds have passed since the first began (or would pass during the
    wait). When the attempts run out the last error is raised (``DatabaseConnectionError``
    for a connection failure), chained to its driver cause; a transaction conflict that
    was retried at least once and still failed becomes a
    :class:`~aegis_shared.errors.exceptions.ConflictRetriesExhaustedError` (a subclass of
    ``TransactionConflictError``, chained to the last conflict). Never retried: integrity
    errors, a refused login (``DatabaseLoginError``), a cancellation, and a COMMIT whose
    outcome is unknown unless ``idempotent=True``. Left out, each setting comes from the
    default manager when the call runs (``DATABASE_RETRY_ATTEMPTS``, ``..._BACKOFF``,
    ``..._BASE_DELAY``, ``..._MAX_DELAY``, ``..._DEADLINE``), else 6 attempts, factor 2,
    0.2 s, 2 s and 30 s, which ride out a server restart of a few seconds.
    """
    if func is not None:
        return with_db_retry()(func)
    _validate(max_attempts, backoff_factor, base_delay, max_delay, deadline)

    def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"with_db_retry decorates async functions; {fn!r} is not one")
        name = getattr(fn, "__qualname__", repr(fn))

        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            default = peek_database()
            attempts = max_attempts or (default.retry_attempts if default else DEFAULT_ATTEMPTS)
            factor = backoff_factor or (default.retry_backoff if default else DEFAULT_BACKOFF)
            base = _pick(base_delay, default.retry_base_delay if default else DEFAULT_BASE_DELAY)
            cap = _pick(max_delay, default.retry_max_delay if default else DEFAULT_MAX_DELAY)
            cap = max(base, cap)
            limit = _pick(deadline, default.retry_deadline if default else DEFAULT_DEADLINE)
            stop: Any = stop_after_attempt(attempts)
            if limit is not None:
                stop = stop | stop_before_delay(limit)
            retrying = AsyncRetrying(
                stop=stop,
                wait=_HalfJitterWait(base, factor, cap),
                retry=retry_if_exception(lambda e: is_retryable(e, idempotent=idempotent)),
                before_sleep=_log_retry(name),
                reraise=True,
            )
            ran = 0
            try:
                async for attempt in retrying:
                    ran += 1
                    with attempt:
                        return await fn(*args, **kwargs)
            except TransactionConflictError as error:
                if ran < 2 or isinstance(error, ConflictRetriesExhaustedError):
                    raise  # never retried (or marked by an inner retry): the plain conflict
                # Retried and still colliding: contention, not the caller's mistake; the
                # distinct class lets the HTTP layer answer 503 instead of 409.
                raise ConflictRetriesExhaustedError(
                    f"{error.message} Gave up after {ran} attempts.",
                    attempts=ran,
                    orig=error.orig,
                ) from error
            raise AssertionError("unreachable: tenacity re-raises the last failure")

        return wrapper

    return decorate


def _pick(given: float | None, otherwise: Any) -> Any:
    """The decorator's own value, else the default manager's (or the library default)."""
    return given if given is not None else otherwise
