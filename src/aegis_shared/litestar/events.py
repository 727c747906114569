"""Server-Sent Events from the event log on Litestar, through its own ``ServerSentEvent``.

Each event goes out with its position as ``id:``, so a reconnecting ``EventSource`` sends
it back as ``Last-Event-ID`` and the stream resumes right after it, replayed from the log,
with no gap and no duplicate::

    from aegis_shared.litestar import event_stream, last_event_id

    @get("/fridges/{fridge_id:int}/events", dependencies={"after": Provide(last_event_id)})
    async def fridge_events(
        fridge_id: FromPath[int], after: NamedDependency[int | None]
    ) -> ServerSentEvent:
        return event_stream(hub, f"fridge:{fridge_id}", after=after)

The messages are those of :func:`aegis_shared.web.event_messages.event_messages`, the same
as FastAPI's. The stream holds no pooled connection while it waits, and when the client
goes away its subscription ends. Checks (a missing row, a forbidden channel) go in the
handler or a dependency before the response is returned: there they still get their
status (404, 403).
"""

from __future__ import annotations

from typing import Annotated

from litestar.exceptions import HTTPException
from litestar.params import HeaderParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.status_codes import HTTP_400_BAD_REQUEST

from aegis_shared.events import EventHub
from aegis_shared.web.event_messages import (
    EventMessage,
    converted,
    event_messages,
    parse_last_event_id,
)


async def last_event_id(
    last_event_id: Annotated[str | None, HeaderParameter(name="Last-Event-ID")] = None,
) -> int | None:
    """Litestar dependency: the position a reconnecting ``EventSource`` resumes after (its
    ``Last-Event-ID`` header), or ``None`` on a first connection. A malformed header is a
    400 before the stream starts. (A coroutine only so that Litestar runs it inline,
    without a thread or a warning: it awaits nothing.)"""
    try:
        return parse_last_event_id(last_event_id)
    except ValueError as exc:
        raise HTTPException(status_code=HTTP_400_BAD_REQUEST, detail=str(exc)) from None


def event_stream(hub: EventHub, channel: str, *, after: int | None = None) -> ServerSentEvent:
    """The events of ``channel`` as a Litestar ``ServerSentEvent`` response: ``id`` =
    position, ``data`` = the published JSON value. ``after`` (usually from
    :func:`last_event_id`): replay from the log after that position first; ``None``: new
    events only. A subscriber behind the retention gets a named ``resync`` event (data
    ``{"after": N, "resume_after": M}``, id ``M``) and should reload its state.

    Raises ``ValueError`` at once for a bad channel or ``after``.
    """
    return ServerSentEvent(converted(event_messages(hub, channel, after=after), _litestar_message))


def _litestar_message(message: EventMessage) -> ServerSentEventMessage:
    # data=None: a comment only (the default "" would add an empty data line, an event).
    return ServerSentEventMessage(
        data=message.data, id=message.id, event=message.event, comment=message.comment
    )
