"""Litestar exception handlers for the data layer's errors: the same statuses, safe bodies,
headers and log lines as FastAPI's :func:`aegis_shared.web.install_error_handlers`.

>>> app = Litestar(route_handlers=[...], exception_handlers=exception_handlers())

(:class:`~aegis_shared.litestar.AegisPlugin` installs them by default.) The body is
``{"error": code, "detail": text}`` (plus ``fields`` for a duplicate): never SQL, tables,
constraints, values or hosts; see :mod:`aegis_shared.web.errors`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from litestar import Request, Response
from litestar.enums import MediaType

from aegis_shared.errors.exceptions import DatabaseError
from aegis_shared.web.errors import error_answer, status_table

#: A Litestar exception handler.
Handler = Callable[[Request[Any, Any, Any], Exception], Response[Any]]


def exception_handlers(
    *,
    statuses: Mapping[type[DatabaseError], int] | None = None,
    expose_details: bool = False,
) -> dict[type[Exception], Handler]:
    """The ``exception_handlers`` mapping that answers every :class:`DatabaseError`.

    ``statuses`` is merged over :data:`aegis_shared.web.errors.STATUS_BY_ERROR` (the most
    specific class of an error decides); keys must be ``DatabaseError`` subclasses (else
    ``TypeError``), statuses 400-599 (else ``ValueError``). ``expose_details=True``
    (development only) adds ``"debug"`` with the exception's own text.
    """
    table = status_table(statuses, expose_details=expose_details, caller="exception_handlers")

    def handle(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        assert isinstance(exc, DatabaseError)
        answer = error_answer(
            exc,
            f"{request.method} {request.url.path}",
            statuses=table,
            expose_details=expose_details,
        )
        return Response(
            answer.body,
            status_code=answer.status,
            headers=answer.headers,
            media_type=MediaType.JSON,
        )

    return {DatabaseError: handle}
