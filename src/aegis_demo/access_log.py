"""Seed 000's access log: every request written by ``BackgroundUnitOfWork`` on the
background pool, after the response, never in its way.

:class:`AccessLogMiddleware` notes method, path, status and duration when the response
has been sent and hands the row to :class:`AccessLogWriter`, which writes it in a task of
its own: the request neither waits for the write nor sees it fail. A failed write (the
database down, the table gone) is logged for the operator and dropped; so are rows beyond
:data:`MAX_PENDING` writes in flight, so that a slow database cannot make them pile up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aegis_demo.models import MAX_PATH, AccessLogRepository
from aegis_shared.database import BackgroundUnitOfWork
from aegis_shared.web.asgi import ASGIApp, Message, Receive, Scope, Send

__all__ = ["AccessLogMiddleware", "AccessLogWriter", "LogUnitOfWork"]

logger = logging.getLogger("aegis_demo.access_log")

#: Writes in flight at most; more are dropped (and counted) rather than queued.
MAX_PENDING = 200


class LogUnitOfWork(BackgroundUnitOfWork):
    """The access log on the background pool, away from request traffic (seed 000)."""

    access_logs: AccessLogRepository


class AccessLogWriter:
    """Writes access-log rows in background tasks; counts what was written and dropped."""

    def __init__(self, *, max_pending: int = MAX_PENDING) -> None:
        self.max_pending = max_pending
        self.written = 0
        self.failed = 0
        self.dropped = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, row: dict[str, Any]) -> None:
        """Write ``row`` soon, in a task of the running loop; returns at once."""
        if len(self._tasks) >= self.max_pending:
            self.dropped += 1
            return
        task = asyncio.get_running_loop().create_task(self._write(row), name="access log")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, row: dict[str, Any]) -> None:
        try:
            async with LogUnitOfWork() as uow:
                await uow.access_logs.create(row)
                await uow.commit()
        except Exception as exc:
            # The request was answered already; the operator learns of the failure here.
            # The error's class only: its text may quote the row or the database's host.
            self.failed += 1
            logger.warning(
                "could not write the access log of %s %s (%s); the request was answered "
                "normally. Check the database and the demo_access_log table.",
                row["method"],
                row["path"],
                type(exc).__name__,
            )
        else:
            self.written += 1

    async def drain(self, within: float = 5.0) -> None:
        """Wait up to ``within`` seconds for the writes in flight (at shutdown), then
        cancel what is left."""
        pending = set(self._tasks)
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=within)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)

    def stats(self) -> dict[str, int]:
        """What the operator panel shows of the writer."""
        return {
            "written": self.written,
            "failed": self.failed,
            "dropped": self.dropped,
            "pending": len(self._tasks),
        }


class AccessLogMiddleware:
    """Pure ASGI: after each HTTP response, one access-log row to ``writer``."""

    def __init__(self, app: ASGIApp, *, writer: AccessLogWriter) -> None:
        self.app = app
        self.writer = writer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request; then submit its row, whatever happened to it."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app fails before it answers

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.writer.submit(
                {
                    "method": str(scope.get("method", "GET"))[:10],
                    # The path only: a query string may carry a token or a question.
                    "path": str(scope.get("path", ""))[:MAX_PATH],
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000),
                }
            )
