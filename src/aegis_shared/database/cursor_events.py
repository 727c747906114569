"""Show the statements this library sends past SQLAlchemy's execution (fast reads, COPY)
the way SQLAlchemy shows its own: logged under ``echo`` and handed to the engine's
``before_cursor_execute``, ``after_cursor_execute`` and ``handle_error`` listeners.

Why by hand: SQLAlchemy logs and dispatches those events only inside its own execution
pipeline (``Connection._exec_single_context``), which the fast path and COPY skip to save
its cost. Without this, ``echo=True`` and the OpenTelemetry, Sentry or Datadog SQLAlchemy
instrumentation (which listen to exactly these events) would miss most of an
application's reads. :func:`send` does what that pipeline does around the driver call,
with the same logger, format and listeners, on the same single statement.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.base import ExceptionContextImpl
from sqlalchemy.pool import PoolProxiedConnection

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

# Marks listeners of this library's own that only concern statements SQLAlchemy runs
# itself in its transactions (SQLite's lazy BEGIN, see dialects.SQLiteProfile). Leaving
# them out keeps "does anyone listen?" a cheap no on every engine this library builds. A
# mark on the function rather than a registry: nothing to look up, nothing kept alive.
_OWN_MARK = "_aegis_own_listener"


def own_listener(fn: F) -> F:
    """Mark ``fn``, a ``before_cursor_execute`` listener of this library, as one that the
    statements sent here need not pass through. Register it with ``retval=True``: without
    it the engine keeps a wrapper of ``fn``, which does not carry the mark."""
    setattr(fn, _OWN_MARK, True)
    return fn


def watched(engine: Engine) -> bool:
    """True when a statement on ``engine`` would be logged or seen by a cursor listener.

    The fast path asks on every read, so when nobody listens this is a few attribute reads
    and a logger level check.
    """
    # _has_events: SQLAlchemy's own flag, set by any listener of the engine's (or Engine
    # class's) connection events, and what it checks before dispatching them.
    if engine._has_events:
        dispatch = engine.dispatch
        for fn in dispatch.before_cursor_execute:
            if not hasattr(fn, _OWN_MARK):
                return True
        if dispatch.after_cursor_execute:
            return True
    # Connection._has_events: listeners on the Connection class itself.
    return Connection._has_events or engine._should_log_info()


def connection_for(engine: Engine, pooled: PoolProxiedConnection) -> Connection:
    """A real :class:`~sqlalchemy.engine.Connection` around a connection the caller checked
    out of ``engine``'s pool itself, for listeners to receive as ``conn``.

    It is never used to execute (that would need a greenlet) nor closed (the caller checks
    ``pooled`` back in). Built with ``_has_events=False`` so that constructing it does not
    fire the engine's ``engine_connect``, which announces ``engine.connect()`` calls, and
    then joined to the engine's listeners exactly as ``Connection.__init__`` would.
    """
    conn = Connection(engine, pooled, _has_events=False)
    conn.dispatch = conn.dispatch._join(engine.dispatch)
    return conn


class StatementCursor:
    """The ``cursor`` listeners receive: what instrumentation reads of a DBAPI cursor
    (``connection``, ``rowcount``, ``description``). The statement itself runs on the driver
    connection directly; a real adapted cursor could not be opened without a greenlet."""

    description = None
    lastrowid = None
    arraysize = 1

    def __init__(self, connection: Connection) -> None:
        self.connection = connection.connection.dbapi_connection
        #: -1 until the statement has run, as in DBAPI; then the rows read or written.
        self.rowcount = -1

    def close(self) -> None:
        """Nothing to release: there is no driver cursor behind this one."""


class StatementContext:
    """The ``context`` listeners receive: the attributes of SQLAlchemy's execution context
    that event consumers read, and room for the ones they set (OpenTelemetry keeps its span
    on it until ``after_cursor_execute`` or ``handle_error``)."""

    compiled = None
    invoked_statement = None
    isinsert = isupdate = isdelete = is_crud = isddl = False
    is_text = True

    def __init__(
        self,
        connection: Connection,
        cursor: StatementCursor,
        statement: str,
        parameters: Sequence[Any],
        executemany: bool,
    ) -> None:
        self.root_connection = self.connection = connection
        self.engine = connection.engine
        self.dialect = connection.dialect
        self.cursor = cursor
        self.statement = statement
        self.parameters = [parameters]
        self.executemany = executemany
        self.execution_options = connection.get_execution_options()


async def send(
    engine: Engine,
    on: Connection | PoolProxiedConnection,
    statement: str,
    parameters: Sequence[Any],
    run: Callable[[str, Sequence[Any]], Awaitable[T]],
    *,
    rowcount: Callable[[T], int],
    stats: str,
    hide_parameters: bool = False,
) -> T:
    """``await run(statement, parameters)``, the one driver call that sends ``statement``
    on ``on`` (a session's connection, or a pooled one checked out by the caller), shown to
    ``engine``'s echo log and cursor listeners as SQLAlchemy would show it.

    ``before_cursor_execute`` listeners may rewrite the statement and parameters (SQL
    comments for tracing); ``run`` receives what they return. ``stats`` is the bracketed
    label of the parameters line in the echo log (SQLAlchemy's says ``raw sql`` or
    ``cached since ...``). Whatever ``run`` or a listener raises reaches ``handle_error``
    listeners and then propagates unchanged: what the caller raises stays the caller's
    business (the fast path translates errors itself), so exceptions those listeners return
    are not substituted.

    The echo log leaves the parameters out when ``hide_parameters`` is true or the engine
    was built with ``hide_parameters=True``, in SQLAlchemy's words for it.
    """
    if not watched(engine):
        try:
            return await run(statement, parameters)
        except BaseException as exc:
            # Listeners of handle_error alone (error reporting) still hear of it.
            if engine.dialect.dispatch.handle_error:
                _handle_error(_connection(engine, on), exc, statement, parameters, None, None)
            raise
    conn = _connection(engine, on)
    parameters = conn.dialect.execute_sequence_format(parameters)
    cursor = StatementCursor(conn)
    context = StatementContext(conn, cursor, statement, parameters, False)
    try:
        for fn in conn.dispatch.before_cursor_execute:
            if not hasattr(fn, _OWN_MARK):
                statement, parameters = fn(conn, cursor, statement, parameters, context, False)
        if conn._echo:
            conn._log_info(statement)
            if hide_parameters:
                conn._log_info("[%s] [SQL parameters hidden due to hide_parameters=True]", stats)
            else:
                conn._log_parameters(parameters, stats, ismulti=False)
        result = await run(statement, parameters)
        cursor.rowcount = rowcount(result)
        conn.dispatch.after_cursor_execute(conn, cursor, statement, parameters, context, False)
    except BaseException as exc:
        _handle_error(conn, exc, statement, parameters, cursor, context)
        raise
    return result


def _connection(engine: Engine, on: Connection | PoolProxiedConnection) -> Connection:
    return on if isinstance(on, Connection) else connection_for(engine, on)


def _handle_error(
    conn: Connection,
    exc: BaseException,
    statement: str,
    parameters: Sequence[Any],
    cursor: StatementCursor | None,
    context: StatementContext | None,
) -> None:
    """Call the dialect's ``handle_error`` listeners as SQLAlchemy would for ``exc``.

    A cancellation or other exit exception counts as a disconnect, as SQLAlchemy counts it.
    A listener that raises stops the others and its exception propagates, as in SQLAlchemy.
    """
    exiting = not isinstance(exc, Exception)
    ctx = ExceptionContextImpl(
        exc,
        None,  # a driver exception, not wrapped in SQLAlchemy's DBAPIError here
        conn.engine,
        conn.dialect,
        conn,
        cursor,  # type: ignore[arg-type]
        statement,
        parameters,
        context,  # type: ignore[arg-type]
        exiting or isinstance(exc, OSError),
        not exiting,
        False,
    )
    ctx.cursor = cursor  # type: ignore[assignment]  # its __init__ leaves the slot unset
    for fn in conn.dialect.dispatch.handle_error:
        fn(ctx)
