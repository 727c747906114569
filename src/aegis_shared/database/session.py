"""The session class every aegis-shared session is made of.

Two additions to SQLAlchemy's ``AsyncSession``:

* ``session.execute("SELECT ...")`` accepts a plain SQL string, as seed 001 writes it; the
  string is wrapped in ``text()`` and values go only through bound parameters
  (``session.execute("SELECT * FROM users WHERE id = :id", {"id": 1})``).
* ``commit()`` flushes first, so a failure there is known not to have committed; a
  connection lost during the COMMIT itself raises
  :class:`~aegis_shared.errors.exceptions.CommitOutcomeUnknownError` (as every COMMIT on
  the library's engines does). After a successful
  commit the ``on_commit`` callbacks run (see :class:`~aegis_shared.database.TransactionManager`).
* Touching an attribute or relationship that was not loaded raises
  :class:`~aegis_shared.errors.exceptions.RelationshipNotLoadedError`, naming the attribute
  and the fix, instead of SQLAlchemy's bare ``MissingGreenlet``.
* A transaction that wrote and committed on the primary, by whatever API, records the
  moment for read-your-writes (:func:`~aegis_shared.database.replicas.note_write_committed`).
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Result
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction
from sqlalchemy.sql import Executable
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.util.concurrency import in_greenlet

from aegis_shared.database import callbacks
from aegis_shared.database.replicas import note_write_committed
from aegis_shared.errors.exceptions import ReadOnlySessionError, RelationshipNotLoadedError

CLOSED_KEY = "aegis.closed"
#: Present in ``session.info`` while the session's transaction holds a connection.
HOLDS_CONNECTION_KEY = "aegis.holds_connection"
#: In ``session.info``: who commits the session's outermost transaction (see claim_commit).
COMMIT_OWNER_KEY = "aegis.commit_owner"
#: In ``session.info``: the transaction may have written (a flush, or a statement that is
#: not a SELECT); cleared when it ends.
WROTE_KEY = "aegis.wrote"
#: In ``session.info``: the session reads on a replica (it never writes).
ON_REPLICA_KEY = "aegis.on_replica"
#: In ``session.info``: the session was opened with ``read_only=True``.
READ_ONLY_KEY = "aegis.read_only"


def declare_read_only(session: Session | AsyncSession) -> None:
    """Make ``session`` refuse writes (``read_only=True``), wherever it reads."""
    session.info[READ_ONLY_KEY] = True


def mark_written(session: Session | AsyncSession) -> None:
    """Record that ``session``'s transaction writes (also for writes that bypass the ORM,
    such as COPY on the driver's connection); a read-only session refuses."""
    if READ_ONLY_KEY in session.info:
        raise ReadOnlySessionError(
            "This session was opened with read_only=True (it may read on a replica) and "
            "cannot write; open the work that writes with db.session() or UnitOfWork()."
        )
    session.info[WROTE_KEY] = True


def _may_write(session: Session, statement: Any) -> None:
    if WROTE_KEY in session.info:
        return
    if getattr(statement, "is_select", False):
        return
    if isinstance(statement, TextClause) and statement.text.lstrip()[:6].upper() == "SELECT":
        return
    mark_written(session)


def claim_commit(session: AsyncSession, owner: str) -> None:
    """Record that ``owner`` (a name for messages, e.g. ``"AppUnitOfWork"``) commits the
    outermost transaction of ``session``, the one it opened.

    Code handed such a session joins that transaction instead of ending it: inside it
    ``TransactionManager.transaction()`` is a SAVEPOINT, and a unit of work wrapping the
    session only flushes on ``commit()``. A session nobody claimed is its caller's to
    commit (``db.session_factory()``, ``get_session`` without the middleware).
    """
    session.info[COMMIT_OWNER_KEY] = owner


def commit_owner(session: AsyncSession) -> str | None:
    """Who claimed the outermost commit of ``session`` (:func:`claim_commit`), if anyone."""
    owner = session.info.get(COMMIT_OWNER_KEY)
    return owner if isinstance(owner, str) else None


def as_statement(statement: Executable | str) -> Executable:
    """``statement`` itself, or a plain SQL string wrapped in ``text()``."""
    if isinstance(statement, str):
        return text(statement)
    return statement


class AegisSyncSession(Session):
    """The synchronous session behind :class:`AegisSession`; accepts SQL strings."""

    def execute(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        """Execute ``statement``; a ``str`` is wrapped in ``text()``."""
        statement = as_statement(statement)
        _may_write(self, statement)
        return super().execute(statement, *args, **kwargs)

    def scalar(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        """Execute ``statement`` and return the first column of the first row."""
        statement = as_statement(statement)
        _may_write(self, statement)
        return super().scalar(statement, *args, **kwargs)

    def scalars(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        """Execute ``statement`` and return its first column as scalars."""
        statement = as_statement(statement)
        _may_write(self, statement)
        return super().scalars(statement, *args, **kwargs)

    def flush(self, objects: Any = None) -> None:
        """Flush pending changes; a read-only session refuses to have any."""
        if READ_ONLY_KEY in self.info and (self.new or self.dirty or self.deleted):
            mark_written(self)  # raises ReadOnlySessionError
        super().flush(objects)


class AegisSession(AsyncSession):
    """``AsyncSession`` that takes SQL strings and explains unloaded attributes."""

    sync_session_class = AegisSyncSession

    async def execute(
        self, statement: Executable | str, params: Any = None, **kwargs: Any
    ) -> Result[Any]:
        """Execute ``statement`` (a SQLAlchemy statement or a SQL string with ``:name`` params)."""
        return await super().execute(as_statement(statement), params, **kwargs)

    async def scalar(self, statement: Executable | str, params: Any = None, **kwargs: Any) -> Any:
        """Execute ``statement`` and return the first column of the first row."""
        return await super().scalar(as_statement(statement), params, **kwargs)

    async def commit(self) -> None:
        """Flush, commit, then run the callbacks registered with ``on_commit``."""
        await self.flush()
        try:
            # A link lost during the COMMIT itself arrives as CommitOutcomeUnknownError,
            # from the engine (see aegis_shared.database.engine), whatever API committed.
            await super().commit()
        except BaseException:
            callbacks.discard_all(self)
            raise
        await callbacks.run_committed(self)

    async def rollback(self) -> None:
        """Roll back the transaction and forget its ``on_commit`` callbacks."""
        callbacks.discard_all(self)
        await super().rollback()

    async def close(self) -> None:
        """Release the connection; uncommitted work is rolled back."""
        callbacks.discard_all(self)
        if HOLDS_CONNECTION_KEY in self.info:
            await super().close()
        else:
            # Nothing to release, so no I/O: skip the greenlet hop (a read-only unit of
            # work on the fast path ends here).
            self.sync_session.close()
        # Lean reads (fast_path) bypass the session's own state checks; this tells them it
        # was closed, so they leave the call to the ORM path. (Only the manager's sessions
        # read fast, and it makes them with close_resets_only=False: closed for good.)
        self.info[CLOSED_KEY] = True


def _attribute_name(state: ORMExecuteState) -> str:
    path = state.loader_strategy_path
    owner = state.lazy_loaded_from
    owner_name = owner.class_.__name__ if owner is not None else "object"
    if path is not None and len(path) >= 2:
        prop = path[-1]
        key = getattr(prop, "key", None)
        if key:
            return f"{owner_name}.{key}"
    return owner_name


@event.listens_for(AegisSyncSession, "do_orm_execute")
def _refuse_implicit_io(state: ORMExecuteState) -> None:
    # A lazy load run from plain async code (not inside SQLAlchemy's greenlet) would fail
    # with MissingGreenlet once it reaches the driver; fail here first, with the fix.
    if not (state.is_relationship_load or state.is_column_load) or in_greenlet():
        return
    name = _attribute_name(state)
    attr = name.rsplit(".", 1)[-1]
    if state.is_relationship_load:
        raise RelationshipNotLoadedError(
            f"{name} is not loaded, and async code cannot load it lazily. Load it with the "
            f"query: .options(selectinload({name})), or await it explicitly: "
            f"await obj.awaitable_attrs.{attr}"
        )
    raise RelationshipNotLoadedError(
        f"{name} has attributes that are not loaded (expired or deferred), and async code "
        "cannot load them lazily. Refresh the object first: await session.refresh(obj), "
        "or keep the session from expiring it (expire_on_commit=False)."
    )


@event.listens_for(AegisSyncSession, "after_begin")
def _connection_taken(session: Session, transaction: SessionTransaction, connection: Any) -> None:
    session.info[HOLDS_CONNECTION_KEY] = True


@event.listens_for(AegisSyncSession, "after_transaction_end")
def _connection_released(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info.pop(HOLDS_CONNECTION_KEY, None)
        session.info.pop(WROTE_KEY, None)


# after_flush_postexec, not after_flush: the library's bulk insert path stands aside for
# the app's own before_flush / after_flush listeners (bulk.returning_batches).
@event.listens_for(AegisSyncSession, "after_flush_postexec")
def _flushed(session: Session, flush_context: Any) -> None:
    session.info[WROTE_KEY] = True


@event.listens_for(AegisSyncSession, "after_commit")
def _committed(session: Session) -> None:
    # after_commit runs in the caller's context (SQLAlchemy's greenlet shares it), so the
    # moment lands in the request's or task's ContextVar.
    if session.in_nested_transaction() or ON_REPLICA_KEY in session.info:
        return
    if session.info.pop(WROTE_KEY, False):
        note_write_committed()


async def rollback_quietly(session: AsyncSession) -> None:
    """Roll back on the way out of a failed block without hiding the failure that caused it.

    If the connection is already gone, the rollback fails too; that second error says
    nothing new, so it is logged and the original exception keeps propagating.
    """
    try:
        await session.rollback()
    except Exception:
        logging.getLogger("aegis_shared.database").debug(
            "rollback after a failure also failed", exc_info=True
        )
