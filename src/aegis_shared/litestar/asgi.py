"""Our pure-ASGI middlewares as Litestar middleware."""

from __future__ import annotations

from typing import Any, cast

from litestar.middleware import DefineMiddleware


def define_middleware(middleware: type[Any], **options: Any) -> DefineMiddleware:
    """``DefineMiddleware(middleware, **options)`` for one of aegis-shared's ASGI
    middlewares (``middleware(app, **options)``).

    The cast is only for the type checker: our middlewares take the ASGI scope and
    messages as plain mappings (they run under Starlette too), Litestar types them as
    its own TypedDicts; at run time both are the same dicts.
    """
    return DefineMiddleware(cast(Any, middleware), **options)
