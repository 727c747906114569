"""HTTP responses for the data layer's errors, for FastAPI and Starlette apps.

A client gets a fixed, documented body that says what kind of failure happened and what to
do, never what the database said: driver messages name tables, constraints and columns,
quote key values ("Key (email)=(victim@...)") and whole rows ("Failing row contains ..."),
and connection errors show hosts and ports. That text goes to the server log instead.

Importing this module needs no Starlette (the ASGI middleware uses :func:`error_body`);
:func:`install_error_handlers` does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import Table
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Mapper, mapperlib

from aegis_shared.errors.exceptions import (
    CheckViolationError,
    CommitOutcomeUnknownError,
    ConflictRetriesExhaustedError,
    DatabaseConnectionError,
    DatabaseError,
    DuplicateEntityError,
    EntityNotFoundError,
    ForeignKeyViolationError,
    IntegrityViolationError,
    InvalidValueError,
    NotNullViolationError,
    PoolTimeoutError,
    QueryTimeoutError,
    TransactionConflictError,
)
from aegis_shared.errors.redaction import mask_urls
from aegis_shared.models import Base
from aegis_shared.web.asgi import Send

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

logger = logging.getLogger("aegis_shared.web")

#: The default status of each error class; the most specific class of an error decides.
STATUS_BY_ERROR: tuple[tuple[type[DatabaseError], int], ...] = (
    (EntityNotFoundError, 404),
    (IntegrityViolationError, 409),
    (InvalidValueError, 422),
    (ConflictRetriesExhaustedError, 503),
    (TransactionConflictError, 409),
    (PoolTimeoutError, 503),
    (DatabaseConnectionError, 503),  # DatabaseLoginError and CommitOutcomeUnknownError too
    (QueryTimeoutError, 504),
    (DatabaseError, 500),
)

#: The ``error`` code of each error class (most specific class decides) and the fixed text
#: that goes with it. Codes are part of the API: clients may switch on them.
CODE_BY_ERROR: tuple[tuple[type[DatabaseError], str], ...] = (
    (EntityNotFoundError, "not_found"),
    (DuplicateEntityError, "duplicate"),
    (ForeignKeyViolationError, "invalid_reference"),
    (NotNullViolationError, "missing_value"),
    (CheckViolationError, "invalid_value"),
    (IntegrityViolationError, "constraint_violation"),
    (InvalidValueError, "invalid_input"),
    (ConflictRetriesExhaustedError, "busy"),
    (TransactionConflictError, "conflict"),
    (PoolTimeoutError, "busy"),
    (CommitOutcomeUnknownError, "outcome_unknown"),
    (DatabaseConnectionError, "unavailable"),
    (QueryTimeoutError, "timeout"),
    (DatabaseError, "internal"),
)

MESSAGES: Mapping[str, str] = {
    "invalid_input": "A value cannot be stored as given (out of range, too long, or of the "
    "wrong type); nothing was saved. Check the request's values.",
    "not_found": "The requested record does not exist.",
    "duplicate": "A record with the same value already exists; use a different value "
    "or change the existing record.",
    "invalid_reference": "The request refers to a record that does not exist, or removes "
    "one that other records still refer to.",
    "missing_value": "A required value is missing.",
    "invalid_value": "A value is outside what is allowed.",
    "constraint_violation": "The data breaks a rule of the database and was not saved.",
    "conflict": "The request collided with a concurrent change and was not saved; send it again.",
    "busy": "The server is too busy to complete the request; try again shortly.",
    "outcome_unknown": "The connection to the database was lost while saving; the changes "
    "may or may not have been saved. Check before sending the request again.",
    "unavailable": "The service is temporarily unavailable; try again later.",
    "timeout": "The request took too long and was cancelled; try again later.",
    "internal": "The server could not complete the request.",
}

#: Every ``error`` code a body can carry.
ERROR_CODES: tuple[str, ...] = tuple(MESSAGES)


def _most_specific(error: type[BaseException], table: Mapping[type[DatabaseError], Any]) -> Any:
    """The value of the first class of ``error``'s MRO that ``table`` has."""
    for cls in error.__mro__:
        if cls in table:
            return table[cls]
    return None


_DEFAULT_STATUSES: dict[type[DatabaseError], int] = dict(STATUS_BY_ERROR)
_CODES: dict[type[DatabaseError], str] = dict(CODE_BY_ERROR)


def status_for(
    error: DatabaseError, *, statuses: Mapping[type[DatabaseError], int] | None = None
) -> int:
    """The HTTP status that ``error`` stands for: its most specific class in ``statuses``
    (merged over :data:`STATUS_BY_ERROR`), else 500."""
    table = _DEFAULT_STATUSES if statuses is None else {**_DEFAULT_STATUSES, **statuses}
    status = _most_specific(type(error), table)
    return int(status) if status is not None else 500


def error_code(error: BaseException) -> str:
    """The stable ``error`` code of ``error`` (``"internal"`` for anything not ours)."""
    code = _most_specific(type(error), _CODES)
    return str(code) if code is not None else "internal"


# -- field names of a unique violation ----------------------------------------------------


def _mappers() -> Iterable[Mapper[Any]]:
    # Every declarative registry alive in the process: the library's Base and any other
    # an app declares. SQLAlchemy keeps them in a private weak map; if a release renames
    # it, fall back to the library's own Base (fields are then known for its models only).
    registries: Iterable[Any] = getattr(mapperlib, "_mapper_registries", None) or [Base.registry]
    for registry in list(registries):
        yield from getattr(registry, "mappers", ())


def _tables_named(name: str) -> list[Table]:
    found: dict[int, Table] = {}
    for mapper in _mappers():
        for table in mapper.tables:
            if isinstance(table, Table) and name in (table.name, table.fullname):
                found[id(table)] = table
    return list(found.values())


def _tables_with_constraint(name: str) -> list[tuple[Table, tuple[str, ...]]]:
    found: dict[int, tuple[Table, tuple[str, ...]]] = {}
    for mapper in _mappers():
        for table in mapper.tables:
            if not isinstance(table, Table):
                continue
            keys: list[tuple[Any, Iterable[Any]]] = [
                (c.name, c.columns) for c in table.constraints if hasattr(c, "columns")
            ]
            keys += [(i.name, i.columns) for i in table.indexes if i.unique]
            for key_name, columns in keys:
                if key_name == name:
                    found[id(table)] = (table, tuple(c.name for c in columns))
    return list(found.values())


def _attribute_names(table: Table, columns: Iterable[str]) -> list[str] | None:
    """The mapped attribute names of ``columns`` of ``table``, or None unless every one is
    known and unambiguous."""
    names: list[str] = []
    for column_name in columns:
        column = table.c.get(column_name)
        if column is None:
            return None  # an expression index ("lower(email)"), or a column not in the table
        keys = set()
        for mapper in _mappers():
            if table in mapper.tables:
                try:
                    keys.add(mapper.get_property_by_column(column).key)
                except sa_exc.SQLAlchemyError:
                    continue  # a column this mapper leaves out
        if len(keys) != 1:
            return None
        names.append(keys.pop())
    return names or None


def unique_fields(error: IntegrityViolationError) -> list[str] | None:
    """The model attribute names behind a unique violation, when they are known for sure.

    From the table and columns the driver reported (PostgreSQL, SQLite) or from the key
    name alone (MariaDB names only the key), looked up in the tables of the mapped models.
    Several models may map a table of that name (two apps, two databases): a table without
    those columns cannot be the one, and the others must all give the same names. ``None``
    rather than a guess otherwise (an expression index, an unknown key or table, a column
    no model maps).
    """
    candidates: list[tuple[Table, tuple[str, ...]]] = []
    if error.table:
        named = {id(t) for t in _tables_named(error.table)}
        if error.columns:
            candidates = [(t, error.columns) for t in _tables_named(error.table)]
        elif error.constraint:
            candidates = [
                (t, cols) for t, cols in _tables_with_constraint(error.constraint) if id(t) in named
            ]
    elif error.constraint:
        candidates = [
            (t, error.columns or cols) for t, cols in _tables_with_constraint(error.constraint)
        ]
    answers: set[tuple[str, ...]] = set()
    for table, columns in candidates:
        if not columns or any(c not in table.c for c in columns):
            continue  # not the table that raised
        names = _attribute_names(table, columns)
        if names is None:
            return None  # the table has the columns, but they map to no single attribute
        answers.add(tuple(names))
    return list(answers.pop()) if len(answers) == 1 else None


# -- bodies and log lines ------------------------------------------------------------------


def error_body(error: BaseException, *, expose_details: bool = False) -> dict[str, Any]:
    """The JSON body a client gets for ``error``: ``{"error": code, "detail": text}``, plus
    ``"fields"`` (model attribute names) for a unique violation when they are known, and
    ``"debug"`` (the exception's class and message) only when ``expose_details``.

    ``detail`` is fixed text per code, except for ``not_found``, which names the model and
    the id asked for ("User with id 42 not found"), or for a lookup by other fields only
    those fields ("Article with this slug not found"): their values may include ones the
    server added (an owner, a tenant), so they stay in the server log.
    """
    code = error_code(error)
    detail = MESSAGES[code]
    if isinstance(error, EntityNotFoundError):
        if error.filters:
            named = " and ".join(str(field) for field in error.filters)
            detail = f"{error.entity} with this {named} not found"
        else:
            detail = error.message
    body: dict[str, Any] = {"error": code, "detail": detail}
    if isinstance(error, DuplicateEntityError):
        fields = unique_fields(error)
        if fields:
            body["fields"] = fields
    if expose_details:
        body["debug"] = {"exception": type(error).__name__, "message": mask_urls(str(error))}
    return body


def _statement(error: BaseException) -> str | None:
    """The SQL of the failed statement (its parameters are row values and stay out)."""
    seen: set[int] = set()
    item: BaseException | None = error
    while item is not None and id(item) not in seen:
        seen.add(id(item))
        statement = getattr(item, "statement", None)
        if isinstance(item, (DatabaseError, sa_exc.StatementError)) and statement:
            return " ".join(str(statement).split())
        item = item.__cause__ or item.__context__
    return None


def _log_error(error: BaseException, status: int, code: str, where: str) -> None:
    """Log what the client was not told: the exception's class and message (URLs masked)
    and the SQL; ERROR for a 5xx (with the traceback for ``internal``), INFO for a 4xx."""
    text = f"{where} answered {status} {code}: {type(error).__name__}: {mask_urls(str(error))}"
    statement = _statement(error)
    if statement:
        text += f" [SQL: {mask_urls(statement)}]"
    if status >= 500:
        # The traceback only where it is the point (a bug): the chain's SQLAlchemy error
        # repeats the statement's parameters, which are row values.
        logger.error("%s", text, exc_info=error if code == "internal" else None)
    else:
        logger.info("%s", text)


async def send_error(
    send: Send,
    error: BaseException,
    where: str,
    *,
    status: int | None = None,
    body: Mapping[str, Any] | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """Answer with ``error``'s safe body from a pure ASGI middleware (whose errors no
    exception handler sees), logging what the client is not told.

    ``status`` defaults to the error's default status; a 503 carries ``Retry-After: 1``
    except after a lost COMMIT, as :func:`install_error_handlers` does. ``body`` replaces
    the default body (:func:`error_body`) for errors that are not the database's;
    ``headers`` are added to the response's.
    """
    if status is None:
        status = status_for(error) if isinstance(error, DatabaseError) else 500
    code = error_code(error) if body is None else str(body.get("error"))
    _log_error(error, status, code, where)
    content = json.dumps(error_body(error) if body is None else body, ensure_ascii=False)
    encoded = content.encode()
    sent = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(encoded)).encode()),
        (b"cache-control", b"no-store"),
        *headers,
    ]
    if status == 503 and code != "outcome_unknown":
        sent.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": sent})
    await send({"type": "http.response.body", "body": encoded, "more_body": False})


# -- installing ----------------------------------------------------------------------------


def _validated(statuses: Mapping[Any, Any] | None) -> dict[type[DatabaseError], int]:
    checked: dict[type[DatabaseError], int] = {}
    for cls, status in (statuses or {}).items():
        if not (isinstance(cls, type) and issubclass(cls, DatabaseError)):
            raise TypeError(
                f"statuses keys must be DatabaseError subclasses, got {cls!r}; "
                "for example {IntegrityViolationError: 422}"
            )
        if isinstance(status, bool) or not isinstance(status, int):
            raise TypeError(f"the status for {cls.__name__} must be an int, got {status!r}")
        if not 400 <= status <= 599:
            raise ValueError(
                f"the status for {cls.__name__} must be an error status from 400 to 599, "
                f"got {status}"
            )
        checked[cls] = status
    return checked


class ErrorAnswer(NamedTuple):
    """What an exception handler sends for a :class:`DatabaseError`, on any framework."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str]


def status_table(
    statuses: Mapping[type[DatabaseError], int] | None = None,
    *,
    expose_details: bool = False,
    caller: str = "install_error_handlers",
) -> dict[type[DatabaseError], int]:
    """The statuses an app's handlers answer with: ``statuses`` checked (keys
    ``DatabaseError`` subclasses, else ``TypeError``; statuses 400-599, else ``ValueError``)
    and merged over :data:`STATUS_BY_ERROR`. Warns once, naming ``caller``, when
    ``expose_details`` is on."""
    table = {**_DEFAULT_STATUSES, **_validated(statuses)}
    if expose_details:
        logger.warning(
            "%s(expose_details=True): error bodies include the database's messages; "
            "never use this in production",
            caller,
        )
    return table


def error_answer(
    error: DatabaseError,
    where: str,
    *,
    statuses: Mapping[type[DatabaseError], int],
    expose_details: bool = False,
) -> ErrorAnswer:
    """The status, safe body and headers for ``error`` (``statuses``: a table from
    :func:`status_table`), after logging what the client is not told under ``where``
    (``"POST /users"``). A 503 carries ``Retry-After: 1`` except after a lost COMMIT."""
    status = status_for(error, statuses=statuses)
    code = error_code(error)
    _log_error(error, status, code, where)
    # Not after a lost COMMIT: the client must check what was saved before retrying.
    retry = status == 503 and code != "outcome_unknown"
    headers = {"Retry-After": "1"} if retry else {}
    return ErrorAnswer(status, error_body(error, expose_details=expose_details), headers)


def install_error_handlers(
    app: Starlette,
    *,
    statuses: Mapping[type[DatabaseError], int] | None = None,
    expose_details: bool = False,
) -> None:
    """Answer every :class:`DatabaseError` with a safe JSON body and its status.

    The body is ``{"error": code, "detail": text}``, plus ``"fields"`` for a duplicate:

    ============  ======================================================================
    status        ``error`` codes (class)
    ============  ======================================================================
    404           ``not_found`` (``EntityNotFoundError``; ``detail`` names model and id)
    409           ``duplicate`` (with ``fields``, the model attributes, when known),
                  ``invalid_reference``, ``missing_value``, ``invalid_value``,
                  ``constraint_violation`` (integrity errors); ``conflict``
                  (``TransactionConflictError`` that was not retried)
    503           ``busy`` (conflict retries ran out, pool timeout), ``unavailable``
                  (connection failure, refused login), ``outcome_unknown`` (connection
                  lost during COMMIT); with ``Retry-After: 1`` except after a lost
                  COMMIT
    504           ``timeout`` (statement timeout)
    500           ``internal`` (everything else: misuse, a bug)
    ============  ======================================================================

    ``detail`` is fixed text per code, never the database's: no SQL, table, constraint,
    column, value or host. The full error (message and SQL, URLs masked) goes to the
    ``aegis_shared.web`` logger, at ERROR for a 5xx and INFO for a 4xx.

    ``statuses`` is merged over the defaults (:data:`STATUS_BY_ERROR`); the most specific
    class of an error decides, so ``{IntegrityViolationError: 422}`` moves every integrity
    error and ``{DuplicateEntityError: 422}`` only duplicates. Keys must be
    ``DatabaseError`` subclasses (else ``TypeError``), statuses 400-599 (else ``ValueError``).

    ``expose_details=True`` (development only) adds ``"debug": {"exception", "message"}``
    with the exception's own text, which may hold SQL and row values.

    On a FastAPI app the OpenAPI schema gains the ``DatabaseErrorBody`` component and a
    response for each of these statuses on every operation, routes added later included.
    """
    table = status_table(statuses, expose_details=expose_details, caller="install_error_handlers")

    async def handle(request: Request, exc: Exception) -> Response:
        from starlette.responses import JSONResponse

        assert isinstance(exc, DatabaseError)
        answer = error_answer(
            exc,
            f"{request.method} {request.url.path}",
            statuses=table,
            expose_details=expose_details,
        )
        return JSONResponse(answer.body, answer.status, answer.headers or None)

    app.add_exception_handler(DatabaseError, handle)
    if callable(getattr(app, "openapi", None)):
        _document(app, table)


# -- OpenAPI -------------------------------------------------------------------------------

SCHEMA_NAME = "DatabaseErrorBody"
#: The codes of the same body shape that the web middlewares answer with themselves:
#: a refused cross-site request (403) and session data over the store's limit (413).
WEB_CODES: tuple[str, ...] = ("csrf", "session_too_large")


#: What a middleware documents of its own answers: (status, methods it applies to or
#: ``None`` for all, description). A middleware class offers them through a classmethod
#: ``documented_errors(options) -> list[DocumentedError]`` (``options``: the keyword
#: arguments it was added with), so this module needs to import no middleware.
DocumentedError = tuple[str, frozenset[str] | None, str]


def _middleware_answers(app: Any) -> list[DocumentedError]:
    """The answers the middlewares added with ``app.add_middleware`` document."""
    found: list[DocumentedError] = []
    for middleware in getattr(app, "user_middleware", ()):
        documented = getattr(getattr(middleware, "cls", None), "documented_errors", None)
        if callable(documented):
            found.extend(documented(dict(getattr(middleware, "kwargs", {}))))
    return found


def _body_schema() -> dict[str, Any]:
    from typing import Literal

    from pydantic import BaseModel, Field

    class DatabaseErrorBody(BaseModel):
        """The body of an error answered by ``install_error_handlers``."""

        error: Literal[ERROR_CODES + WEB_CODES] = Field(  # type: ignore[valid-type]
            description="Stable code of the kind of failure; switch on this."
        )
        detail: str = Field(description="What happened and what to do, for people.")
        fields: list[str] | None = Field(
            default=None, description="For a duplicate: the fields whose value is taken."
        )
        debug: dict[str, str] | None = Field(
            default=None, description="Only in development mode (expose_details=True)."
        )

    return DatabaseErrorBody.model_json_schema()


def _document(app: Any, table: Mapping[type[DatabaseError], int]) -> None:
    """Wrap ``app.openapi`` so that the schema, whenever it is built, documents the body
    for every operation (routes added after ``install_error_handlers`` included)."""
    original = app.openapi
    codes_by_status: dict[int, list[str]] = {}
    for cls, code in CODE_BY_ERROR:
        status = int(_most_specific(cls, table) or 500)
        if code not in codes_by_status.setdefault(status, []):
            codes_by_status[status].append(code)

    ref = {"$ref": f"#/components/schemas/{SCHEMA_NAME}"}

    def openapi() -> dict[str, Any]:
        schema: dict[str, Any] = original()
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas.setdefault(SCHEMA_NAME, _body_schema())
        answers = _middleware_answers(app)
        for operations in schema.get("paths", {}).values():
            for method, operation in operations.items():
                if method not in {"get", "put", "post", "delete", "patch", "head", "options"}:
                    continue
                responses = operation.setdefault("responses", {})
                for status, codes in sorted(codes_by_status.items()):
                    _add_response(responses, str(status), "Database error: " + ", ".join(codes))
                for answer_status, methods, description in answers:
                    if methods is None or method in methods:
                        _add_response(responses, answer_status, description)
        return schema

    def _add_response(responses: dict[str, Any], status: str, description: str) -> None:
        documented = responses.get(status)
        if documented is None:
            responses[status] = {
                "description": description,
                "content": {"application/json": {"schema": ref}},
            }
            return
        # The operation has its own body for this status (FastAPI's 422): either may come.
        content = documented.setdefault("content", {}).setdefault("application/json", {})
        existing = content.get("schema")
        if existing is None:
            content["schema"] = ref
        elif existing != ref and ref not in existing.get("anyOf", []):
            content["schema"] = {"anyOf": [existing, ref]}
        if description not in documented.get("description", ""):
            documented["description"] = f"{documented.get('description', '')}; {description}"

    app.openapi = openapi


__all__ = [
    "CODE_BY_ERROR",
    "ERROR_CODES",
    "MESSAGES",
    "STATUS_BY_ERROR",
    "WEB_CODES",
    "DocumentedError",
    "ErrorAnswer",
    "error_answer",
    "error_body",
    "error_code",
    "install_error_handlers",
    "send_error",
    "status_for",
    "status_table",
    "unique_fields",
]
