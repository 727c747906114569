"""``provide_services``: several services on one session, from any session source (seed 004).

>>> async with provide_services(provide_users_service, provide_roles_service) as (users, roles):
...     ...

A provider is an async-generator function taking a session (consumed with ``anext`` and
closed afterwards), or any callable or class taking a session. Where the session comes from:

=====================  ==========================  =======================
source                 lifecycle                   closed here
=====================  ==========================  =======================
neither argument       opened here, committed on   yes
                       success, rolled back on
                       error
``connection=``        the request's session       no (the request ends it)
``session=``           the caller's session        no (the caller owns it)
=====================  ==========================  =======================
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, aclosing, asynccontextmanager
from typing import Any, TypeVar, overload

from sqlalchemy.ext.asyncio import AsyncSession

from aegis_shared.database.registry import get_database
from aegis_shared.database.request_scope import request_session_of

S1 = TypeVar("S1")
S2 = TypeVar("S2")
S3 = TypeVar("S3")
S4 = TypeVar("S4")
S5 = TypeVar("S5")
S6 = TypeVar("S6")

#: A service provider: ``async def p(session): yield Service(session)``, or any callable
#: (a class included) taking the session and returning the service.
Provider = (
    Callable[[AsyncSession], AsyncGenerator[S1, None]]
    | Callable[[AsyncSession], Awaitable[S1]]
    | Callable[[AsyncSession], S1]
)
#: An async provider only (async generator, or coroutine function returning the service).
#: It also matches the plain-callable arm of ``Provider``, so mypy cannot infer its service
#: from ``Provider`` (it falls back to ``Any``); the overloads taking only these come first
#: and give async providers their service types.
AsyncProvider = (
    Callable[[AsyncSession], AsyncGenerator[S1, None]] | Callable[[AsyncSession], Awaitable[S1]]
)


@overload
def provide_services(
    p1: AsyncProvider[S1],
    /,
    *,
    session: AsyncSession | None = None,
    connection: Any = None,
) -> AbstractAsyncContextManager[tuple[S1]]: ...


@overload
def provide_services(
    p1: AsyncProvider[S1],
    p2: AsyncProvider[S2],
    /,
    *,
    session: AsyncSession | None = None,
    connection: Any = None,
) -> AbstractAsyncContextManager[tuple[S1, S2]]: ...


@overload
def provide_services(
    p1: AsyncProvider[S1],
    p2: AsyncProvider[S2],
    p3: AsyncProvider[S3],
    /,
    *,
    session: AsyncSession | None = None,
    connection: Any = None,
) -> AbstractAsyncContextManager[tuple[S1, S2, S3]]: ...


@overload
def provide_services(
    p1: AsyncProvider[S1],
    p2: AsyncProvider[S2],
    p3: AsyncProvider[S3],
    p4: AsyncProvider[S4],
    /,
    *,
    session: AsyncSession | None = None,
    connection: Any = None,
) -> AbstractAsyncContextManager[tuple[S1, S2, S3, S4]]: ...


@overload
def provide_services(
    p1: AsyncProvider[S1],
    p2: AsyncProvider[S2],
    p3: AsyncProvider[S3],
    p4: AsyncProvider[S4],
    p5: AsyncProvider[S5],
    /,
    *,
    session: AsyncSession | None = None,
    connection: Any = None,
) -> AbstractAsyncContextManager[tuple[S1, S2, S3, S4, S5]]: ...


@overload
def provide_services(
    p1: AsyncProvider[S1],
    p2: AsyncProvider[S2],
    p3: AsyncProvider[S3],
    p4: AsyncProvider[S4],
    p5: AsyncProvider[S5],
    p6: AsyncProvider[S6],
    /,
    *,
    session: AsyncSession | None = None,
    connection: Any = None,
) -> AbstractAsyncContextManager[tuple[S1, S2, S3, S4, S5, S6]]: ...


@overload
def provide_services(
    p1: Provider[S1], /, *, session: AsyncSession | None = None, connection: Any = None
) -> AbstractAsyncContextManager[tuple[S1]]: ...


@overload
def provide_services(
    p1: Provider[S1],
    p2: Provider[S2],
    /,
    *,
    session: AsyncSession | None = None,
    connection: Any = None,
) -> AbstractAsyncContextManager[tuple[S1, S2]]: ...


@overload
def provide_services(
    p1: Provider[S1],
    p2: Provider[S2],
    p3: Provider[S3],
    /,
    *,
    session: AsyncSession | None = None,
    connection: Any = None,
) -> AbstractAsyncContextManager[tuple[S1, S2, S3]]: ...


@overload
def provide_services(
    p1: Provider[S1],
    p2: Provider[S2],
    p3: Provider[S3],
    p4: Provider[S4],
    /,
    *,
    session: AsyncSession | None = None,
    connection: Any = None,
) -> AbstractAsyncContextManager[tuple[S1, S2, S3, S4]]: ...


@overload
def provide_services(
    p1: Provider[S1],
    p2: Provider[S2],
    p3: Provider[S3],
    p4: Provider[S4],
    p5: Provider[S5],
    /,
    *,
    session: AsyncSession | None = None,
    connection: Any = None,
) -> AbstractAsyncContextManager[tuple[S1, S2, S3, S4, S5]]: ...


@overload
def provide_services(
    p1: Provider[S1],
    p2: Provider[S2],
    p3: Provider[S3],
    p4: Provider[S4],
    p5: Provider[S5],
    p6: Provider[S6],
    /,
    *,
    session: AsyncSession | None = None,
    connection: Any = None,
) -> AbstractAsyncContextManager[tuple[S1, S2, S3, S4, S5, S6]]: ...


@overload
def provide_services(
    *providers: Provider[Any], session: AsyncSession | None = None, connection: Any = None
) -> AbstractAsyncContextManager[tuple[Any, ...]]: ...


def provide_services(
    *providers: Provider[Any], session: AsyncSession | None = None, connection: Any = None
) -> AbstractAsyncContextManager[tuple[Any, ...]]:
    """Build each provider's service on one session and yield them as a tuple.

    Raises ``ValueError`` when no provider is given or when both ``session`` and
    ``connection`` are. A provider that fails propagates its own exception, and the
    providers already entered are closed.
    """
    if not providers:
        raise ValueError("At least one service provider is required")
    if session is not None and connection is not None:
        raise ValueError("Cannot provide both 'session' and 'connection' - choose one")
    return _provide(providers, session, connection)


@asynccontextmanager
async def _provide(
    providers: tuple[Provider[Any], ...], session: AsyncSession | None, connection: Any
) -> AsyncIterator[tuple[Any, ...]]:
    if session is not None:
        async with _services(providers, session) as services:
            yield services
    elif connection is not None:
        async with _services(providers, request_session_of(connection).get()) as services:
            yield services
    else:
        async with get_database().session() as own, _services(providers, own) as services:
            yield services


@asynccontextmanager
async def _services(
    providers: tuple[Provider[Any], ...], session: AsyncSession
) -> AsyncIterator[tuple[Any, ...]]:
    async with AsyncExitStack() as stack:
        services = []
        for provider in providers:
            if not callable(provider):
                raise TypeError(f"provide_services() takes callables, got {provider!r}")
            made = provider(session)
            if inspect.isasyncgen(made):
                generator = await stack.enter_async_context(aclosing(made))
                try:
                    services.append(await anext(generator))
                except StopAsyncIteration:
                    raise TypeError(
                        f"provider {getattr(provider, '__qualname__', provider)!r} returned "
                        "without yielding a service"
                    ) from None
            elif inspect.isawaitable(made):
                services.append(await made)
            else:
                services.append(made)
        yield tuple(services)
