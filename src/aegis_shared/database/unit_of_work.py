"""Class-based units of work (seed 000): repositories on one session, explicit commit.

A unit of work either opens its own session (``async with AppUnitOfWork() as uow``) and
owns its commit, or wraps a session someone else opened (``AppUnitOfWork.wrap(session)``,
the request's from ``Depends(get_session)``), so an app declares its repositories once and
uses the same class from handlers and background work. Whoever opened the session owns the
outermost commit; see :meth:`UnitOfWork.wrap` for what ``commit()`` means on a wrapper.
"""

from __future__ import annotations

import typing
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, ClassVar, Self, cast

from sqlalchemy.ext.asyncio import AsyncSession

from aegis_shared.database.fast_path import pin_server
from aegis_shared.database.manager import DatabaseManager
from aegis_shared.database.registry import get_database
from aegis_shared.database.repository import BaseRepository
from aegis_shared.database.session import (
    AegisSession,
    claim_commit,
    commit_owner,
    declare_read_only,
    rollback_quietly,
)
from aegis_shared.database.transactions import TransactionManager, transaction_depth
from aegis_shared.database.write_intent import declare_write
from aegis_shared.errors.exceptions import UnitOfWorkStateError


class UnitOfWork:
    """A session and the repositories declared on the subclass, for one business operation.

    >>> class AppUnitOfWork(UnitOfWork):
    ...     user_access_logs: UserAccessLogRepository
    >>> async with AppUnitOfWork() as uow:
    ...     await uow.user_access_logs.create(data)
    ...     await uow.commit()

    Nothing is saved until ``await uow.commit()``; leaving the block without it, or with an
    exception, rolls back. The session is always closed at the end, and the unit of work
    (and its repositories) refuse use afterwards. ``UnitOfWork()`` uses the default manager
    (see :func:`~aegis_shared.database.configure_database`); pass one to choose another.

    ``UnitOfWork(write=True)`` is for work that reads and then writes (a toggle, a
    counter): each of its transactions begins as a write transaction, so on SQLite
    concurrent ones queue for the write lock instead of failing with a conflict, and its
    reads run inside the transaction (see :mod:`aegis_shared.database.write_intent`).

    ``UnitOfWork(read_only=True)`` is for work that only reads: with the manager's
    ``replica_urls`` its session reads on a healthy replica that has this context's own
    writes, else on the primary, for its whole life (see
    :mod:`~aegis_shared.database.replicas`); a write there raises
    ``ReadOnlySessionError`` before anything is sent, on the primary too.

    ``AppUnitOfWork(session=session)`` or ``AppUnitOfWork.wrap(session)`` binds the same
    repositories to a session opened elsewhere, without owning it (see :meth:`wrap`).
    """

    _repository_types: ClassVar[dict[str, type[BaseRepository[Any]]] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._repository_types = None

    def __init__(
        self,
        db: DatabaseManager | None = None,
        *,
        write: bool = False,
        read_only: bool = False,
        session: AsyncSession | None = None,
    ) -> None:
        if write and read_only:
            raise ValueError(f"{type(self).__name__}() is read_only=True or write=True, not both")
        if read_only and session is not None:
            raise TypeError(
                f"{type(self).__name__}(read_only=True) opens its own session on a replica; "
                "a wrapped session stays on the server it was opened on"
            )
        if session is not None and db is not None:
            raise TypeError(
                f"{type(self).__name__}() got both db= and session=; pass session= to wrap "
                "a session you already have, or db= to open one from that manager"
            )
        self._db = db
        self._write = write
        self._read_only = read_only
        self._session: AegisSession | None = None
        self._state = "new"
        self._wraps = session is not None
        if session is not None:
            if write:
                declare_write(session)
            # Any AsyncSession works; the library's own sessions are AegisSession.
            self._bind(cast(AegisSession, session))

    @classmethod
    def wrap(cls, session: AsyncSession, *, write: bool = False) -> Self:
        """This unit of work's repositories on ``session``, which someone else opened.

        >>> @app.post("/items")
        ... async def add(session: AsyncSession = Depends(get_session)):
        ...     uow = AppUnitOfWork.wrap(session)
        ...     await uow.items.create(...)
        ...     await uow.commit()

        Usable at once (``async with`` is optional and only marks where its use ends).
        The wrapper never closes the session and, leaving a block, never commits or
        rolls back: the session's opener does. ``commit()`` follows the rule "whoever
        opened the session owns the outermost commit": on a session claimed by its
        opener (the request's session under ``DatabaseSessionMiddleware``, another unit
        of work's) it only flushes, and the owner commits at its end, so the same service
        code commits for real in a background ``async with AppUnitOfWork()`` and joins the
        request's transaction in a handler. On a session nobody claimed (``get_session``
        without the middleware, ``db.session()``) it commits, as the caller would.
        ``rollback()`` on a claimed session raises ``UnitOfWorkStateError``: it would
        undo work that is not the wrapper's; use ``async with uow.savepoint():`` to undo a
        part, or raise to make the owner roll back. ``write=True`` calls
        :func:`~aegis_shared.database.write_intent.declare_write` on the session.
        """
        return cls(session=session, write=write)

    def _bind(self, session: AegisSession) -> None:
        # A unit of work that may write reads where it writes, the primary, from its first
        # read on; a read-only one stays where its session was sent (a replica, or the
        # primary when none had this context's writes).
        pin_server(session)
        self._session = session
        self._state = "open"
        for name, repository in self._declared_repositories().items():
            setattr(self, name, repository(session))

    @classmethod
    def _declared_repositories(cls) -> dict[str, type[BaseRepository[Any]]]:
        if cls._repository_types is None:
            # Resolved lazily (not in __init_subclass__) so annotations may name
            # repositories defined after the unit of work.
            try:
                hints = typing.get_type_hints(cls)
            except NameError as exc:
                raise TypeError(
                    f"{cls.__name__} declares a repository whose type cannot be resolved "
                    f"({exc}); define the repository class at module level"
                ) from exc
            cls._repository_types = {
                name: hint
                for name, hint in hints.items()
                if isinstance(hint, type) and issubclass(hint, BaseRepository)
            }
        return cls._repository_types

    def _manager(self) -> DatabaseManager:
        return self._db or get_database()

    def _open_session(self) -> AegisSession:
        return self._manager().session_factory()

    async def __aenter__(self) -> Self:
        if self._wraps and self._state == "open":
            self._state = "entered"
            return self
        if self._state != "new":
            raise UnitOfWorkStateError(
                f"{type(self).__name__} was already used in an async with block; create a "
                "new one for each operation"
            )
        if self._read_only:
            session = (await self._manager().read_factory())()
            declare_read_only(session)
        else:
            session = self._open_session()
        if self._write:
            declare_write(session)
        # It opened the session, so it owns the commit: transaction() blocks inside are
        # SAVEPOINTs, and units of work wrapping this session only flush.
        claim_commit(session, type(self).__name__)
        self._bind(session)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        session = self.session
        self._state = "closed"
        for name in self._declared_repositories():
            self.__dict__.pop(name, None)
        if self._wraps:
            # Not its session: the opener commits, rolls back (the exception reaches it)
            # and closes.
            self._session = None
            return
        try:
            if exc is not None:
                await rollback_quietly(session)
        finally:
            # close() undoes whatever was not committed. Unlike rollback() it does not
            # expire the objects first, so what the block read stays readable after it.
            await session.close()
            self._session = None

    def __getattr__(self, name: str) -> Any:
        # Only reached for declared repositories that are not set: outside the block.
        if name in type(self)._declared_repositories():
            raise UnitOfWorkStateError(self._outside_message(name))
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _outside_message(self, what: str) -> str:
        name = type(self).__name__
        when = "before its async with block" if self._state == "new" else "after its block ended"
        if self._wraps:
            return f"{name}.{what} was used {when}; wrap the session again: {name}.wrap(session)"
        return f"{name}.{what} was used {when}; use it inside 'async with {name}() as uow:'"

    @property
    def session(self) -> AegisSession:
        """The unit of work's session (only inside the block)."""
        if self._session is None:
            raise UnitOfWorkStateError(self._outside_message("session"))
        return self._session

    async def commit(self) -> None:
        """Save everything done so far; the unit of work stays usable for more work.

        On a wrapped session claimed by its opener this only flushes: the opener commits
        (see :meth:`wrap`). Inside an open ``transaction()``/``savepoint()`` block it
        raises ``UnitOfWorkStateError``: a COMMIT there would end the block's SAVEPOINT
        before the block does.
        """
        session = self.session
        self._refuse_inside_block(session, "commit")
        if self._wraps and commit_owner(session) is not None:
            await session.flush()
            return
        await session.commit()

    async def rollback(self) -> None:
        """Undo everything since the last commit.

        Raises ``UnitOfWorkStateError`` inside an open ``transaction()``/``savepoint()``
        block, and on a wrapped session claimed by its opener (see :meth:`wrap`).
        """
        session = self.session
        self._refuse_inside_block(session, "rollback")
        owner = commit_owner(session)
        if self._wraps and owner is not None:
            raise UnitOfWorkStateError(
                f"{type(self).__name__}.rollback() was called on a session that {owner} "
                f"opened and commits; rolling it back would undo work that is not this unit "
                f"of work's. Put the work to undo in 'async with uow.savepoint():', or raise "
                f"so that {owner} rolls back."
            )
        await session.rollback()

    def _refuse_inside_block(self, session: AsyncSession, what: str) -> None:
        if transaction_depth(session):
            raise UnitOfWorkStateError(
                f"{type(self).__name__}.{what}() was called inside an open transaction() or "
                f"savepoint() block; it would end the whole transaction before the block "
                f"ends. Call it after the block, or raise inside the block to undo it."
            )

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[AegisSession]:
        """A SAVEPOINT block on the unit of work's session; never commits.

        Raising inside undoes only the block's work (the objects it touched stay readable)
        and propagates, see :meth:`TransactionManager.savepoint`::

            try:
                async with uow.savepoint():
                    await uow.articles.create(Article(slug=slug, ...))
            except DuplicateEntityError:
                ...  # pick another slug and try again
        """
        session = self.session
        async with TransactionManager(session).savepoint():
            yield session

    async def flush(self) -> None:
        """Send pending changes to the database without committing (ids become known)."""
        await self.session.flush()


class BackgroundUnitOfWork(UnitOfWork):
    """A :class:`UnitOfWork` on the background pool, separate from request traffic."""

    def _open_session(self) -> AegisSession:
        return self._manager().background_session_factory()
