"""After-commit callbacks kept on a session, one frame per open SAVEPOINT.

A callback belongs to the innermost block it was registered in. When that block's
SAVEPOINT is released its callbacks move to the enclosing block; when it rolls back they
are dropped. They run only after the outermost COMMIT succeeds.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

logger = logging.getLogger("aegis_shared.database")

OnCommitCallback = Callable[[], Awaitable[Any] | Any]
_KEY = "aegis.on_commit_frames"


def _frames(session: AsyncSession) -> list[list[OnCommitCallback]]:
    frames: list[list[OnCommitCallback]] = session.info.setdefault(_KEY, [[]])
    return frames


def register(session: AsyncSession, callback: OnCommitCallback) -> None:
    """Run ``callback`` after the session's next successful outermost commit."""
    if not callable(callback):
        raise TypeError(f"on_commit() needs a callable, got {callback!r}")
    _frames(session)[-1].append(callback)


def push_frame(session: AsyncSession) -> None:
    """Open a frame for a SAVEPOINT block."""
    _frames(session).append([])


def release_frame(session: AsyncSession) -> None:
    """The SAVEPOINT was released: its callbacks join the enclosing block."""
    frames = _frames(session)
    if len(frames) > 1:
        done = frames.pop()
        frames[-1].extend(done)


def drop_frame(session: AsyncSession) -> None:
    """The SAVEPOINT rolled back: its callbacks never run."""
    frames = _frames(session)
    if len(frames) > 1:
        frames.pop()


def discard_all(session: AsyncSession) -> None:
    """The whole transaction rolled back or the session closed: forget every callback."""
    session.info[_KEY] = [[]]


async def run_committed(session: AsyncSession) -> None:
    """Run the callbacks of a transaction that has just committed.

    The data is already saved, so a failing callback is logged rather than raised: raising
    would tell the caller the work failed when it did not.
    """
    frames = session.info.pop(_KEY, None)
    if not frames:
        return
    for frame in frames:
        for callback in frame:
            try:
                result = callback()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("on_commit callback %r failed after a successful commit", callback)
