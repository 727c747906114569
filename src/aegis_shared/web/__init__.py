"""FastAPI / Starlette glue: the per-request session middleware and error handlers.

Needs the ``fastapi`` extra (``pip install aegis-shared[fastapi]``) for the error handlers;
the middleware is plain ASGI.
"""

from aegis_shared.web.middleware import DatabaseSessionMiddleware

__all__ = ["DatabaseSessionMiddleware", "install_error_handlers"]


def __getattr__(name: str) -> object:
    # Imported lazily so the middleware works without Starlette installed.
    if name == "install_error_handlers":
        from aegis_shared.web.errors import install_error_handlers

        return install_error_handlers
    raise AttributeError(name)
