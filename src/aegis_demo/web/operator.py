"""The operator panel's data: pool status, session statistics, the access log, the
housekeeping job and the event log, live over Server-Sent Events.

A browser signs in with the admin token once (``POST /operator/login``); the session then
carries the operator's mark, and the session id is rotated, as at any change of privilege.
Without an admin token configured the panel is switched off, like the admin endpoints.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from aegis_demo.access_log import AccessLogWriter, LogUnitOfWork
from aegis_demo.errors import errors
from aegis_demo.fridge.admin import token_matches
from aegis_demo.fridge.app import Fridge
from aegis_demo.jobs import Housekeeping, provide_access_log_service, provide_chat_answer_service
from aegis_shared.database import provide_services
from aegis_shared.errors.exceptions import DatabaseError
from aegis_shared.events import events_table
from aegis_shared.web import HttpSession, current_session

__all__ = ["OPERATOR", "CurrentSession", "Operator", "is_operator", "operator_router"]

#: The session key that marks an operator.
OPERATOR = "operator"
#: Seconds between two updates of the live panel.
REFRESH_SECONDS = 2.0
#: Updates one stream sends before it ends (the browser's EventSource then reconnects,
#: and the operator mark is checked again).
UPDATES_PER_STREAM = 150
#: Rows of the access log and the event log the panel shows.
SHOWN = 12
#: What the panel shows when one update could not be read (never the database's text).
UNAVAILABLE = "The figures could not be read just now; the panel tries again shortly."

logger = logging.getLogger("aegis_demo.operator")


class TokenLogin(BaseModel):
    """The admin token, typed into the operator panel."""

    token: str = Field(min_length=1, max_length=200)


def is_operator(session: HttpSession) -> bool:
    """Did this session sign in with the admin token?"""
    return session.get(OPERATOR) is True


class Operator:
    """What the panel reads: the fridge's store and token, the writer and the job."""

    def __init__(self, fridge: Fridge, writer: AccessLogWriter, housekeeping: Housekeeping):
        self.fridge = fridge
        self.writer = writer
        self.housekeeping = housekeeping

    async def overview(self) -> dict[str, Any]:
        """One snapshot of everything the panel shows (only declared fields)."""
        stats = await self.fridge.sessions.stats()
        async with LogUnitOfWork() as uow:
            logs = await uow.access_logs.newest(SHOWN)
            statement = (
                select(events_table.c.channel, events_table.c.position, events_table.c.created_at)
                .where(events_table.c.position.is_not(None))
                .order_by(events_table.c.id.desc())
                .limit(SHOWN)
            )
            events = (await uow.session.execute(statement)).all()
            # Seed 004's third source: the services on a session the caller owns (the
            # unit of work's), which provide_services neither commits nor closes.
            async with provide_services(
                provide_access_log_service, provide_chat_answer_service, session=uow.session
            ) as (log_service, answer_service):
                stored = {
                    "access_log_rows": await log_service.count(),
                    "chat_answers": await answer_service.count(),
                }
        last = self.housekeeping.last
        return {
            "pools": self.fridge.db.pool_status(),
            "stored": stored,
            "sessions": {
                "active": stats.active,
                "ingredients": stats.child_rows,
                "expired_waiting": stats.expired_waiting,
                "oldest": _iso(stats.oldest_created_at),
            },
            "access_log": {
                **self.writer.stats(),
                "newest": [
                    {
                        "at": _iso(row.created_at),
                        "method": row.method,
                        "path": row.path,
                        "status": row.status,
                        "ms": row.duration_ms,
                    }
                    for row in logs
                ],
            },
            "housekeeping": None
            if last is None
            else {**asdict(last), "finished_at": _iso(last.finished_at)},
            "events": [
                {"channel": e.channel, "position": e.position, "at": _iso(e.created_at)}
                for e in events
            ],
        }


async def _update(operator: Operator) -> ServerSentEvent:
    """The next event of the panel's stream: an ``overview``, or ``unavailable``."""
    try:
        overview = await operator.overview()
    except (DatabaseError, SQLAlchemyError) as exc:
        # Ours (pool, connection) or the driver's own (a table gone: a ProgrammingError).
        # The error's class only: its text may quote SQL, a table or the database's host.
        logger.warning(
            "the operator panel could not read its figures (%s); it tries again in %.0f s. "
            "Check the database (aegis doctor).",
            type(exc).__name__,
            REFRESH_SECONDS,
        )
        return ServerSentEvent(event="unavailable", data={"detail": UNAVAILABLE})
    return ServerSentEvent(event="overview", data=overview)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="seconds")


#: The visitor's server-side session, as a dependency (the pages use it too).
CurrentSession = Annotated[HttpSession, Depends(current_session)]


def operator_router(operator: Operator) -> APIRouter:
    """``POST /operator/login``, ``POST /operator/logout`` and ``GET /operator/stream``."""
    router = APIRouter(prefix="/operator", tags=["operator"])
    token = operator.fridge.token

    @router.post(
        "/login",
        status_code=status.HTTP_204_NO_CONTENT,
        responses=errors(
            (401, "Wrong admin token."),
            (403, "The operator panel is disabled: no admin token is configured."),
            (409, "The session ended meanwhile."),
        ),
    )
    async def login(body: TokenLogin, session: CurrentSession) -> Response:
        """Sign this browser in as the operator with the admin token."""
        if token is None:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                "The operator panel is disabled: start the demo with FRIDGE_ADMIN_TOKEN set.",
            )
        if not token_matches(body.token, token):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Wrong admin token; try again.")
        await session.ensure()
        session[OPERATOR] = True
        if not await session.rotate():  # a new id at the change of privilege
            raise HTTPException(
                status.HTTP_409_CONFLICT, "The session ended meanwhile; sign in again."
            )
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
    async def logout(session: CurrentSession) -> Response:
        """Sign the operator out (the visitor's session and fridge stay)."""
        if session.key is not None and OPERATOR in session:
            del session[OPERATOR]
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    async def require_operator(session: CurrentSession) -> None:
        """A real 403 before the stream starts, for a browser not signed in."""
        if not is_operator(session):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, "Sign in on /operator with the admin token first."
            )

    @router.get(
        "/stream",
        response_class=EventSourceResponse,
        dependencies=[Depends(require_operator)],
        responses=errors((403, "Not signed in as the operator.")),
    )
    async def stream(request: Request) -> AsyncIterator[ServerSentEvent]:
        """The panel's figures as Server-Sent Events, one ``overview`` every two seconds;
        each read takes and returns its own connection. An update that cannot be read
        (the database away, a table missing) is an ``unavailable`` event, and the stream
        goes on: one failed read costs one update, not the panel."""
        for _ in range(UPDATES_PER_STREAM):
            if await request.is_disconnected():
                return
            yield await _update(operator)
            await asyncio.sleep(REFRESH_SECONDS)

    return router
