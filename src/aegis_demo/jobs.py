"""The application's background job (seed 004): ``provide_services(...)`` gives a job its
services on one session of its own, committed when the job's block succeeds.

:class:`Housekeeping` runs every few minutes: it trims the access log to its retention and
counts what the operator panel shows, through two services built by their providers on
the same session, as seed 004's ``cleanup_auth_tokens`` job does with three.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import ClassVar

from sqlalchemy.ext.asyncio import AsyncSession

from aegis_demo.models import AccessLogRepository
from aegis_demo.realtime.models import ChatAnswerRepository
from aegis_shared.database import provide_services
from aegis_shared.models import utcnow
from aegis_shared.periodic import PeriodicSweeper

__all__ = [
    "AccessLogService",
    "ChatAnswerService",
    "Housekeeping",
    "provide_access_log_service",
    "provide_chat_answer_service",
]

#: How long the access log keeps a request.
ACCESS_LOG_RETENTION = timedelta(days=1)


class AccessLogService:
    """The access log's operations for jobs."""

    def __init__(self, session: AsyncSession) -> None:
        self.logs = AccessLogRepository(session)

    async def trim(self, older_than: datetime) -> int:
        """Delete the requests logged before ``older_than``; returns how many went."""
        return await self.logs.delete_where(created_at__lt=older_than)

    async def count(self) -> int:
        """How many requests the log holds."""
        return await self.logs.count()


class ChatAnswerService:
    """The stored chat answers, as jobs see them."""

    def __init__(self, session: AsyncSession) -> None:
        self.answers = ChatAnswerRepository(session)

    async def count(self) -> int:
        """How many answers are stored."""
        return await self.answers.count()


async def provide_access_log_service(
    session: AsyncSession,
) -> AsyncGenerator[AccessLogService, None]:
    """Seed 004's provider shape: an async generator yielding the service on ``session``."""
    yield AccessLogService(session)


async def provide_chat_answer_service(
    session: AsyncSession,
) -> AsyncGenerator[ChatAnswerService, None]:
    """The chat answers' provider."""
    yield ChatAnswerService(session)


@dataclass
class HousekeepingRun:
    """What the last run did."""

    finished_at: datetime
    trimmed: int
    access_log_rows: int
    chat_answers: int


class Housekeeping(PeriodicSweeper):
    """Trims the access log every ``every`` (default five minutes) and keeps the figures
    of its last run for the operator panel."""

    label: ClassVar[str] = "demo housekeeping"
    task_name: ClassVar[str] = "aegis demo housekeeping"
    logger: ClassVar[logging.Logger] = logging.getLogger("aegis_demo.jobs")

    def __init__(
        self,
        *,
        every: timedelta = timedelta(minutes=5),
        jitter: timedelta = timedelta(seconds=30),
        retention: timedelta = ACCESS_LOG_RETENTION,
    ) -> None:
        super().__init__(every=every, jitter=jitter)
        self.retention = retention
        self.last: HousekeepingRun | None = None

    async def sweep(self) -> int:
        """One run: both services on one session, which ``provide_services`` opens on the
        default manager and commits when the block ends without an error."""
        async with provide_services(provide_access_log_service, provide_chat_answer_service) as (
            logs,
            answers,
        ):
            trimmed = await logs.trim(utcnow() - self.retention)
            remaining = await logs.count()
            stored = await answers.count()
        self.sweeps += 1
        self.last = HousekeepingRun(datetime.now(UTC), trimmed, remaining, stored)
        return trimmed
