"""Class-based units of work (seed 000): repositories on one session, explicit commit."""

from __future__ import annotations

import typing
from types import TracebackType
from typing import Any, ClassVar, Self

from aegis_shared.database.manager import DatabaseManager
from aegis_shared.database.registry import get_database
from aegis_shared.database.repository import BaseRepository
from aegis_shared.database.session import AegisSession, rollback_quietly
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
    """

    _repository_types: ClassVar[dict[str, type[BaseRepository[Any]]] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._repository_types = None

    def __init__(self, db: DatabaseManager | None = None, *, write: bool = False) -> None:
        self._db = db
        self._write = write
        self._session: AegisSession | None = None
        self._state = "new"

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
        if self._state != "new":
            raise UnitOfWorkStateError(
                f"{type(self).__name__} was already used in an async with block; create a "
                "new one for each operation"
            )
        self._session = self._open_session()
        if self._write:
            declare_write(self._session)
        self._state = "open"
        for name, repository in self._declared_repositories().items():
            setattr(self, name, repository(self._session))
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
        when = "before its async with block" if self._state == "new" else "after its block ended"
        return (
            f"{type(self).__name__}.{what} was used {when}; use it inside "
            f"'async with {type(self).__name__}() as uow:'"
        )

    @property
    def session(self) -> AegisSession:
        """The unit of work's session (only inside the block)."""
        if self._session is None:
            raise UnitOfWorkStateError(self._outside_message("session"))
        return self._session

    async def commit(self) -> None:
        """Save everything done so far; the unit of work stays usable for more work."""
        await self.session.commit()

    async def rollback(self) -> None:
        """Undo everything since the last commit."""
        await self.session.rollback()

    async def flush(self) -> None:
        """Send pending changes to the database without committing (ids become known)."""
        await self.session.flush()


class BackgroundUnitOfWork(UnitOfWork):
    """A :class:`UnitOfWork` on the background pool, separate from request traffic."""

    def _open_session(self) -> AegisSession:
        return self._manager().background_session_factory()
