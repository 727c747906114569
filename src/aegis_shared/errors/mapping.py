"""Turn driver and SQLAlchemy errors of PostgreSQL, SQLite and MariaDB into our hierarchy.

This is the only module that knows driver error codes. The engine's ``handle_error`` hook
(see :mod:`aegis_shared.database.engine`) calls :func:`translate_dbapi_error` for every failed
statement and connect, so the rest of the library and its callers only ever see
:mod:`aegis_shared.errors.exceptions`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from sqlalchemy import exc as sa_exc

from aegis_shared.errors.exceptions import (
    CheckViolationError,
    DatabaseConnectionError,
    DatabaseError,
    DatabaseLoginError,
    DuplicateEntityError,
    ForeignKeyViolationError,
    IntegrityViolationError,
    InvalidValueError,
    NotNullViolationError,
    QueryTimeoutError,
    TransactionConflictError,
)

# PostgreSQL SQLSTATE codes (appendix A of the PostgreSQL manual).
_PG_UNIQUE = "23505"
_PG_FOREIGN_KEY = "23503"
_PG_NOT_NULL = "23502"
_PG_CHECK = "23514"
_PG_CONFLICT = {"40001", "40P01", "55P03"}  # serialization failure, deadlock, lock not available
_PG_QUERY_CANCELED = "57014"
# connection lost or refused, shutdown, starting up, too many connections
_PG_CONNECTION_CLASSES = ("08", "57P01", "57P02", "57P03", "53300")
# the login itself refused: bad password or role ("28"), no such database
_PG_LOGIN_CLASSES = ("28", "3D000")
# a value the server cannot store or compare: class 22 "data exception" (out of range,
# too long, invalid text), and a comparison of mismatched types ("operator does not
# exist: integer = character varying", what a query-string value on an integer column
# gives) or a datatype mismatch
_PG_INVALID_VALUE_CLASSES = ("22", "42883", "42804")

# MariaDB / MySQL server and client error numbers.
_MY_DUPLICATE = {1062, 1586}
_MY_FOREIGN_KEY = {1216, 1217, 1451, 1452}
_MY_NOT_NULL = {1048, 1364}
_MY_CHECK = {3819, 4025}
_MY_CONFLICT = {1205, 1213}  # lock wait timeout, deadlock
_MY_QUERY_TIMEOUT = {1969, 3024}  # MariaDB max_statement_time, MySQL max_execution_time
# out of range, data too long, incorrect value for the column, truncated wrong value,
# BIGINT UNSIGNED out of range, invalid JSON text
_MY_INVALID_VALUE = {1264, 1406, 1366, 1292, 1690, 3140}
_MY_LOGIN = {
    1044,  # access denied to the database
    1045,  # bad user or password
    1049,  # no such database
    1698,  # access denied (unix_socket plugin)
}
_MY_CONNECTION = {
    1040,
    1042,
    1043,
    1047,
    1053,
    1077,
    1152,
    1158,
    1159,
    1160,
    1161,
    2002,
    2003,
    2005,
    2006,
    2013,
    2055,
    4031,
}

# SQLite extended result codes (sqlite3.Error.sqlite_errorcode, Python >= 3.11).
_SQLITE_UNIQUE = {2067, 1555}  # SQLITE_CONSTRAINT_UNIQUE, SQLITE_CONSTRAINT_PRIMARYKEY
_SQLITE_FOREIGN_KEY = 787
_SQLITE_NOT_NULL = 1299
_SQLITE_CHECK = 275
_SQLITE_BUSY_PRIMARY = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED and their extended codes
_SQLITE_CANTOPEN = 14  # the database file cannot be opened (and its extended codes)

_SQLITE_COLUMNS = re.compile(r"constraint failed: (.+)$")
_MY_KEY = re.compile(r"for key '([^']+)'")
_MY_COLUMN = re.compile(r"(?:Column|Field) '([^']+)'")
_MY_FK = re.compile(r"CONSTRAINT `([^`]+)` FOREIGN KEY \(`([^`]+)`\)")


def _chain(error: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _attr(error: BaseException, name: str) -> Any:
    for item in _chain(error):
        value = getattr(item, name, None)
        if value is not None:
            return value
    return None


_MYSQL_MODULES = ("asyncmy", "aiomysql", "pymysql", "MySQLdb")


def _driver(error: BaseException) -> str | None:
    """Which driver raised ``error``: the codes of one mean nothing to another."""
    for item in _chain(error):
        module = type(item).__module__
        if module.startswith("asyncpg"):
            return "asyncpg"
        if module.startswith(_MYSQL_MODULES):
            return "mysql"
        if module.startswith("sqlite3"):
            return "sqlite3"
    return None


def _mysql_code(error: BaseException) -> int | None:
    for item in _chain(error):
        args = getattr(item, "args", ())
        if args and isinstance(args[0], int) and type(item).__module__.startswith(_MYSQL_MODULES):
            return args[0]
    return None


def _message(error: BaseException) -> str:
    for item in _chain(error):
        if type(item).__module__.startswith(
            ("asyncpg", "asyncmy", "aiomysql", "pymysql", "sqlite3")
        ):
            return str(item).strip()
    return str(error).strip()


def _integrity(
    cls: type[IntegrityViolationError],
    what: str,
    detail: str,
    orig: BaseException,
    *,
    constraint: str | None = None,
    columns: tuple[str, ...] = (),
    table: str | None = None,
) -> IntegrityViolationError:
    named = f" (constraint {constraint})" if constraint else ""
    cols = f" on {', '.join(columns)}" if columns else ""
    hint = {
        DuplicateEntityError: "use a different value or update the existing row",
        ForeignKeyViolationError: "create the referenced row first, or delete the rows "
        "that still reference it",
        NotNullViolationError: "give the column a value",
        CheckViolationError: "change the value so that the check holds",
    }.get(cls, "check the values written")
    message = f"{what}{cols}{named}: {detail.rstrip('.')}. Nothing was written; {hint}."
    return cls(message, constraint=constraint, columns=columns, table=table, orig=orig)


def _from_postgres(sqlstate: str, error: BaseException) -> DatabaseError | None:
    detail = _message(error)
    constraint = _attr(error, "constraint_name")
    column = _attr(error, "column_name")
    table = _attr(error, "table_name")
    columns: tuple[str, ...] = (column,) if column else ()
    if sqlstate == _PG_UNIQUE:
        key = re.search(r"Key \(([^)]+)\)=", str(_attr(error, "detail") or ""))
        if key:
            columns = tuple(c.strip() for c in key.group(1).split(","))
        return _integrity(
            DuplicateEntityError,
            "Duplicate value",
            detail,
            error,
            constraint=constraint,
            columns=columns,
            table=table,
        )
    if sqlstate == _PG_FOREIGN_KEY:
        return _integrity(
            ForeignKeyViolationError,
            "Foreign key violated",
            detail,
            error,
            constraint=constraint,
            columns=columns,
            table=table,
        )
    if sqlstate == _PG_NOT_NULL:
        return _integrity(
            NotNullViolationError,
            "Missing required value",
            detail,
            error,
            constraint=constraint,
            columns=columns,
            table=table,
        )
    if sqlstate == _PG_CHECK:
        return _integrity(
            CheckViolationError,
            "Check constraint violated",
            detail,
            error,
            constraint=constraint,
            columns=columns,
            table=table,
        )
    if sqlstate.startswith("23"):
        return _integrity(
            IntegrityViolationError,
            "Integrity constraint violated",
            detail,
            error,
            constraint=constraint,
            columns=columns,
            table=table,
        )
    if sqlstate in _PG_CONFLICT:
        return TransactionConflictError(
            f"Transaction conflict ({sqlstate}): {detail}. Retry the whole transaction, "
            "for example with @with_db_retry.",
            orig=error,
        )
    if sqlstate == _PG_QUERY_CANCELED:
        return QueryTimeoutError(
            f"Statement cancelled: {detail}. Make the query cheaper or raise "
            "DATABASE_STATEMENT_TIMEOUT.",
            orig=error,
        )
    if sqlstate.startswith(_PG_INVALID_VALUE_CLASSES):
        return _invalid_value(detail, error)
    if sqlstate.startswith(_PG_LOGIN_CLASSES):
        return _login_error(detail, error)
    if sqlstate.startswith(_PG_CONNECTION_CLASSES):
        return _connection_error(detail, error)
    return None


def _from_mysql(code: int, error: BaseException) -> DatabaseError | None:
    detail = _message(error)
    if code in _MY_DUPLICATE:
        key = _MY_KEY.search(detail)
        constraint = key.group(1).split(".")[-1] if key else None
        return _integrity(
            DuplicateEntityError, "Duplicate value", detail, error, constraint=constraint
        )
    if code in _MY_FOREIGN_KEY:
        fk = _MY_FK.search(detail)
        return _integrity(
            ForeignKeyViolationError,
            "Foreign key violated",
            detail,
            error,
            constraint=fk.group(1) if fk else None,
            columns=(fk.group(2),) if fk else (),
        )
    if code in _MY_NOT_NULL:
        column = _MY_COLUMN.search(detail)
        return _integrity(
            NotNullViolationError,
            "Missing required value",
            detail,
            error,
            columns=(column.group(1),) if column else (),
        )
    if code in _MY_CHECK:
        return _integrity(CheckViolationError, "Check constraint violated", detail, error)
    if code in _MY_CONFLICT:
        return TransactionConflictError(
            f"Transaction conflict ({code}): {detail}. Retry the whole transaction, "
            "for example with @with_db_retry.",
            orig=error,
        )
    if code in _MY_QUERY_TIMEOUT:
        return QueryTimeoutError(
            f"Statement cancelled: {detail}. Make the query cheaper or raise "
            "DATABASE_STATEMENT_TIMEOUT.",
            orig=error,
        )
    if code in _MY_INVALID_VALUE:
        return _invalid_value(detail, error)
    if code in _MY_LOGIN:
        return _login_error(detail, error)
    if code in _MY_CONNECTION:
        return _connection_error(detail, error)
    return None


def _from_sqlite(code: int | None, error: BaseException) -> DatabaseError | None:
    detail = _message(error)
    found = _SQLITE_COLUMNS.search(detail)
    columns = tuple(c.strip() for c in found.group(1).split(",")) if found else ()
    bare = tuple(c.split(".")[-1] for c in columns)
    table = columns[0].split(".")[0] if columns and "." in columns[0] else None
    if code in _SQLITE_UNIQUE or "UNIQUE constraint failed" in detail:
        return _integrity(
            DuplicateEntityError, "Duplicate value", detail, error, columns=bare, table=table
        )
    if code == _SQLITE_FOREIGN_KEY or "FOREIGN KEY constraint failed" in detail:
        return _integrity(ForeignKeyViolationError, "Foreign key violated", detail, error)
    if code == _SQLITE_NOT_NULL or "NOT NULL constraint failed" in detail:
        return _integrity(
            NotNullViolationError,
            "Missing required value",
            detail,
            error,
            columns=bare,
            table=table,
        )
    if code == _SQLITE_CHECK or "CHECK constraint failed" in detail:
        return _integrity(CheckViolationError, "Check constraint violated", detail, error)
    if code is not None and code & 0xFF == _SQLITE_CANTOPEN:
        return _connection_error(detail, error)
    if (code is not None and code & 0xFF in _SQLITE_BUSY_PRIMARY) or "database is locked" in detail:
        return TransactionConflictError(
            f"Transaction conflict (SQLite busy): {detail}. Retry the whole transaction, "
            "for example with @with_db_retry.",
            orig=error,
        )
    return None


def _connection_error(detail: str, error: BaseException) -> DatabaseConnectionError:
    # Some driver errors have no text (a bare TimeoutError): name the error instead.
    detail = detail or type(error).__name__
    return DatabaseConnectionError(
        f"Database connection failed: {detail}. Check that the database is running and "
        "DATABASE_URL is right; transient failures are retried by @with_db_retry.",
        orig=error,
    )


def _invalid_value(detail: str, error: BaseException) -> InvalidValueError:
    return InvalidValueError(
        f"The database rejected a value: {detail}. Nothing was written; check the "
        "value's type, length and range before it reaches the repository.",
        orig=error,
    )


def _login_error(detail: str, error: BaseException) -> DatabaseLoginError:
    return DatabaseLoginError(
        f"The database refused the login: {detail}. This is not transient and is not "
        "retried: fix the user, password or database name in DATABASE_URL.",
        orig=error,
    )


def translate_dbapi_error(
    error: BaseException, *, is_disconnect: bool = False
) -> DatabaseError | None:
    """Return our exception for a driver or SQLAlchemy ``error``, or ``None`` if it has none.

    ``is_disconnect`` is SQLAlchemy's own verdict that the connection is gone; it wins over
    codes because a dropped connection makes every other reading unreliable.
    """
    if isinstance(error, DatabaseError):
        return error
    if not isinstance(error, Exception):
        # CancelledError, KeyboardInterrupt, GreenletExit: a caller's decision to stop,
        # never a database failure; they must reach the caller as themselves.
        return None
    root = error.orig if isinstance(error, sa_exc.DBAPIError) and error.orig is not None else error
    driver = _driver(root)
    mapped: DatabaseError | None = None
    if driver == "asyncpg":
        sqlstate = _attr(root, "sqlstate")
        mapped = _from_postgres(sqlstate, root) if isinstance(sqlstate, str) else None
    elif driver == "mysql":
        code = _mysql_code(root)
        mapped = _from_mysql(code, root) if code is not None else None
    elif driver == "sqlite3":
        mapped = _from_sqlite(_attr(root, "sqlite_errorcode"), root)
    if mapped is not None:
        return mapped
    if any(isinstance(item, OverflowError) for item in _chain(error)):
        # The driver could not even encode the value (SQLite: "Python int too large to
        # convert to SQLite INTEGER"): nothing was sent.
        return _invalid_value(_message(root), root)
    if is_disconnect or isinstance(root, (ConnectionError, OSError, TimeoutError)):
        return _connection_error(_message(root), root)
    if isinstance(error, sa_exc.IntegrityError):
        return _integrity(
            IntegrityViolationError, "Integrity constraint violated", _message(root), root
        )
    if (
        isinstance(error, (sa_exc.OperationalError, sa_exc.InterfaceError))
        and not isinstance(error, sa_exc.ProgrammingError)
        and getattr(error, "connection_invalidated", False)
    ):
        return _connection_error(_message(root), root)
    return None


def is_client_timeout(error: BaseException) -> bool:
    """True when the client gave up waiting for the server (its command or read timeout):
    asyncpg raises ``TimeoutError``, asyncmy error 2013 "... (read timeout)"."""
    if any(isinstance(item, TimeoutError) for item in _chain(error)):
        return True
    return _mysql_code(error) == 2013 and "read timeout" in _message(error)


def is_connection_error(error: BaseException) -> bool:
    """True when ``error`` (translated or not) means the connection is unusable."""
    translated = translate_dbapi_error(error)
    return isinstance(translated, DatabaseConnectionError)
