"""HTTP responses for the data layer's errors, for FastAPI and Starlette apps."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from aegis_shared.errors.exceptions import (
    DatabaseConnectionError,
    DatabaseError,
    EntityNotFoundError,
    IntegrityViolationError,
    PoolTimeoutError,
    QueryTimeoutError,
    TransactionConflictError,
)

# Most specific first: the first matching class decides the status.
STATUS_BY_ERROR: tuple[tuple[type[DatabaseError], int], ...] = (
    (EntityNotFoundError, 404),
    (IntegrityViolationError, 409),
    (TransactionConflictError, 409),
    (PoolTimeoutError, 503),
    (DatabaseConnectionError, 503),
    (QueryTimeoutError, 504),
    (DatabaseError, 500),
)


def status_for(error: DatabaseError) -> int:
    """The HTTP status that ``error`` stands for."""
    for cls, status in STATUS_BY_ERROR:
        if isinstance(error, cls):
            return status
    return 500


async def _handle(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DatabaseError)
    status = status_for(exc)
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse({"detail": str(exc), "error": type(exc).__name__}, status, headers)


def install_error_handlers(app: Starlette) -> None:
    """Answer ``EntityNotFoundError`` with 404, constraint violations and conflicts with 409,
    pool and connection failures with 503 (``Retry-After: 1``), statement timeouts with 504."""
    app.add_exception_handler(DatabaseError, _handle)
