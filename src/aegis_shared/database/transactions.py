"""Explicit transaction blocks with SAVEPOINT nesting (seed 001's ``TransactionManager``).

Who commits: whoever opened the session owns its outermost commit. A session opened by a
:class:`~aegis_shared.database.UnitOfWork` or by ``DatabaseSessionMiddleware`` is claimed
by it (:func:`~aegis_shared.database.session.claim_commit`), so a ``transaction()`` block
inside it is a SAVEPOINT and the owner's ``commit()`` (or the end of the request) saves the
work. On a session nobody claimed (``db.session()``, ``db.session_factory()``,
``get_session`` without the middleware) the outermost ``transaction()`` commits, as seed
001's example expects. ``savepoint()`` never commits, whoever owns the session.

Objects stay usable after a SAVEPOINT rolls back. SQLAlchemy expires every object the
block changed (and with ``expire_on_commit=False`` still does on a rollback), and async
code cannot load expired attributes lazily: the next read would raise
:class:`~aegis_shared.errors.exceptions.RelationshipNotLoadedError`. So after the rollback
the block reloads them from the database, in one ``SELECT`` per class (plus one per
relationship that was loaded on them, so ``article.tags`` stays readable too). They then
hold their state from before the block, which is what the database has. An object added
inside the block becomes transient again, as SQLAlchemy makes it: the values it was given
stay readable, values only the database would have filled in read as ``None``, and it can
be added again (the slug-collision retry). Only blocks of this module do this; a bare
``session.begin_nested()`` keeps SQLAlchemy's behaviour.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, inspect, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstanceState, Mapper, Session, selectinload

from aegis_shared.database import callbacks
from aegis_shared.database.callbacks import OnCommitCallback
from aegis_shared.database.session import commit_owner, rollback_quietly

_DEPTH = "aegis.transaction_depth"
_SNAPSHOTS = "aegis.savepoint_snapshots"
# Ids per reloading SELECT: well below every backend's bound-parameter limit.
_RELOAD_CHUNK = 500

logger = logging.getLogger("aegis_shared.database")


def transaction_depth(session: AsyncSession) -> int:
    """How many ``transaction()``/``savepoint()`` blocks are open on ``session``."""
    depth: int = session.info.get(_DEPTH, 0)
    return depth


class TransactionManager:
    """Group work on one session into all-or-nothing blocks.

    >>> async with db.session() as session:
    ...     async with TransactionManager(session).transaction():
    ...         await users.create(User(email="a@example.com"))
    ...         async with TransactionManager(session).transaction():  # SAVEPOINT
    ...             ...

    The outermost block commits when it ends normally and rolls back when it raises; work
    the session held before the block is part of that transaction. A nested block is a
    SAVEPOINT: if it raises, only its own work is undone and the exception propagates, so
    the caller may catch it and carry on. Depth is kept on the session, so managers created
    by different code for the same session nest correctly.

    On a session a unit of work or the request middleware opened, even the outermost block
    is a SAVEPOINT: the owner commits (see the module docstring). :meth:`savepoint` is a
    SAVEPOINT always.
    """

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    @property
    def depth(self) -> int:
        """How many blocks are open on this session (0 outside any)."""
        return transaction_depth(self.session)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """Open a block: the outermost commits or rolls back, inner ones are SAVEPOINTs.

        On a session whose commit is owned by someone else (a unit of work, the request
        middleware) the outermost block is a SAVEPOINT too and never commits.
        """
        commits = self.depth == 0 and commit_owner(self.session) is None
        async with self._block(savepoint=not commits):
            yield self.session

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[AsyncSession]:
        """Open a SAVEPOINT block, at any depth: it never commits.

        Ending normally releases the SAVEPOINT (its work joins the enclosing transaction,
        which its owner commits); raising rolls back only the block's work, leaves the
        objects readable (see the module docstring) and propagates the exception::

            async with tm.savepoint():
                await articles.create(Article(slug=slug, ...))   # may collide
        """
        async with self._block(savepoint=True):
            yield self.session

    @asynccontextmanager
    async def _block(self, *, savepoint: bool) -> AsyncIterator[None]:
        depth = self.depth
        self.session.info[_DEPTH] = depth + 1
        try:
            if savepoint:
                async with self._savepoint():
                    yield
            else:
                async with self._outermost():
                    yield
        finally:
            self.session.info[_DEPTH] = depth

    @asynccontextmanager
    async def _outermost(self) -> AsyncIterator[None]:
        try:
            yield
            # Inside the try: a COMMIT (or its flush) that fails rolls back like the block.
            await self.session.commit()
        except BaseException:
            callbacks.discard_all(self.session)
            await rollback_quietly(self.session)
            raise
        # An AegisSession already ran them in commit(); a plain AsyncSession did not.
        await callbacks.run_committed(self.session)

    @asynccontextmanager
    async def _savepoint(self) -> AsyncIterator[None]:
        savepoint = await self.session.begin_nested()
        callbacks.push_frame(self.session)
        snapshot = _Snapshot()
        snapshots: list[_Snapshot] = self.session.info.setdefault(_SNAPSHOTS, [])
        snapshots.append(snapshot)
        try:
            yield
            # A flush that fails at the end of the block fails the block, like one inside it.
            await self.session.flush()
        except BaseException as exc:
            callbacks.drop_frame(self.session)
            # Also when a failed flush already deactivated it: only rollback() closes the
            # SAVEPOINT and makes the enclosing transaction usable again.
            try:
                await savepoint.rollback()
            finally:
                snapshots.pop()
            # Not on cancellation: a cancelled task should stop doing I/O, not reload.
            if isinstance(exc, Exception):
                await snapshot.restore(self.session)
            raise
        snapshots.pop()
        await savepoint.commit()
        callbacks.release_frame(self.session)

    def on_commit(self, callback: OnCommitCallback) -> None:
        """Run ``callback`` (sync or async, no arguments) after the outermost commit.

        Registered inside a block that later rolls back, it never runs. A callback that
        raises is logged, not raised: the data is already committed by then.
        """
        callbacks.register(self.session, callback)


class _Snapshot:
    """What the session held just before a SAVEPOINT rolled back, to repair what the
    rollback expires.

    Taken from SQLAlchemy's ``after_rollback`` event, which comes after the ROLLBACK TO
    SAVEPOINT and before the objects are expired: a flush that fails inside the block rolls
    the SAVEPOINT back itself, before the block's own code sees the error.
    """

    def __init__(self) -> None:
        # The relationships each object had loaded: expiry forgets them, the reload
        # brings them back. Objects already expired are left as they were.
        self.loaded: dict[InstanceState[Any], frozenset[str]] = {}
        # The objects added inside the block, flushed (in the identity map) or pending,
        # turn transient; which ones is only known after the rollback.
        self.candidates: list[InstanceState[Any]] = []

    def capture(self, sync: Session) -> None:
        """Record the session's objects (called once per rollback inside the block)."""
        for state in sync.identity_map.all_states():
            if not state.expired and state not in self.loaded:
                self.loaded[state] = frozenset(
                    key for key in _reloadable(state.mapper) if key in state.dict
                )
                self.candidates.append(state)
        self.candidates.extend(inspect(obj) for obj in sync.new)

    async def restore(self, session: AsyncSession) -> None:
        """Reload the objects the rollback expired; make the now-transient ones readable."""
        for state in self.candidates:
            if state.transient:
                # Attributes the flush marked "load from the database" (server values):
                # a transient object has no database to load them from, so they read as
                # unset (None) instead of raising DetachedInstanceError.
                state.expired_attributes.clear()
                state.expired = False
        expired: dict[Mapper[Any], list[InstanceState[Any]]] = {}
        for state in session.sync_session.identity_map.all_states():
            if state.expired and state in self.loaded:
                expired.setdefault(state.mapper, []).append(state)
        try:
            for mapper, states in expired.items():
                relationships: set[str] = set()
                for state in states:
                    relationships |= self.loaded[state]
                await _reload(session, mapper, states, relationships)
        except Exception:
            # The block's own exception is the one to report; objects left expired raise
            # RelationshipNotLoadedError (with its fix) if they are read.
            logger.debug("reloading objects after a SAVEPOINT rollback failed", exc_info=True)


@event.listens_for(Session, "after_rollback")
def _capture_before_expiry(session: Session) -> None:
    # On every Session (a plain AsyncSession's too, TransactionManager takes either); a
    # dict lookup unless a savepoint() / transaction() SAVEPOINT block is open.
    snapshots: list[_Snapshot] | None = session.info.get(_SNAPSHOTS)
    if snapshots:
        snapshots[-1].capture(session)


def _reloadable(mapper: Mapper[Any]) -> list[str]:
    # Dynamic and write-only relationships are queries, never loaded into the object.
    return [rel.key for rel in mapper.relationships if rel.lazy not in ("dynamic", "write_only")]


async def _reload(
    session: AsyncSession,
    mapper: Mapper[Any],
    states: list[InstanceState[Any]],
    relationships: Iterable[str],
) -> None:
    columns = mapper.primary_key
    options = [selectinload(getattr(mapper.class_, key)) for key in sorted(relationships)]
    identities = [state.identity for state in states if state.identity is not None]
    for start in range(0, len(identities), _RELOAD_CHUNK):
        chunk = identities[start : start + _RELOAD_CHUNK]
        if len(columns) == 1:
            condition = columns[0].in_([identity[0] for identity in chunk])
        else:
            condition = tuple_(*columns).in_(chunk)
        # A plain SELECT, not a repository read: soft-deleted rows held by the session are
        # reloaded too (the soft-delete scope belongs to repository calls only).
        statement = (
            select(mapper.class_)
            .where(condition)
            .options(*options)
            .execution_options(populate_existing=True, autoflush=False)
        )
        await session.execute(statement)
