"""Server-Sent Events from the event log, on FastAPI's own ``fastapi.sse``.

Each event goes out with its position as the SSE ``id:``, so a browser's ``EventSource``
that reconnects sends it back as ``Last-Event-ID`` and the stream resumes right after it,
replayed from the log, with no gap and no duplicate::

    from fastapi.sse import EventSourceResponse
    from aegis_shared.web.events import event_stream, last_event_id

    @app.get("/fridges/{fridge_id}/events", response_class=EventSourceResponse)
    async def fridge_events(fridge_id: int, after: int | None = Depends(last_event_id)):
        async for message in event_stream(hub, f"fridge:{fridge_id}", after=after):
            yield message

The stream holds no pooled connection while it waits (see :class:`~aegis_shared.events.EventHub`),
and when the client goes away its subscription ends with it.

Checks (a missing row, a forbidden channel) belong in a dependency, not in the generator:
the status line goes out before the generator's first line, so a raise there is a 200
with an empty body, while a dependency's ``EntityNotFoundError`` or ``HTTPException(403)``
is answered with its status by the app's error handlers. Such a dependency takes
``Depends(get_session, scope="function")`` and is a plain ``async def``, so its
connection goes back as the stream starts; per-event reads open their own short session
(docs/guide.md, "Server-Sent Events").
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Header, HTTPException
from fastapi.sse import ServerSentEvent

from aegis_shared.events import EventHub
from aegis_shared.web.event_messages import (
    EventMessage,
    converted,
    event_messages,
    parse_last_event_id,
)


def last_event_id(
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> int | None:
    """FastAPI dependency: the position a reconnecting ``EventSource`` resumes after (its
    ``Last-Event-ID`` header), or ``None`` on a first connection.

    A dependency, not code in the stream: it runs before the response starts, so a
    malformed header can still be answered with 400 (inside a streaming endpoint the
    status is already 200).
    """
    try:
        return parse_last_event_id(last_event_id)
    except ValueError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None


def event_stream(
    hub: EventHub, channel: str, *, after: int | None = None
) -> AsyncIterator[ServerSentEvent]:
    """The events of ``channel`` as ``ServerSentEvent`` messages: ``id`` = position, ``data``
    = the published JSON value. ``after`` (usually from :func:`last_event_id`): replay from
    the log after that position first; ``None``: new events only. A subscriber that fell
    behind gets an SSE comment (``: resync``) and then the events it missed. One whose
    next events were removed by retention gets a named event ``resync`` (data
    ``{"after": N, "resume_after": M}``, id ``M``): the page should reload its state
    (``source.addEventListener("resync", reload)``); the stream goes on after ``M``, and
    a reconnect resumes from there rather than asking for the trimmed events again.

    Raises ``ValueError`` at once (not at the first event) for a bad channel or ``after``.
    """
    return converted(event_messages(hub, channel, after=after), _fastapi_message)


def _fastapi_message(message: EventMessage) -> ServerSentEvent:
    if message.data is None:
        return ServerSentEvent(comment=message.comment)
    # raw_data: the JSON text as it is (data= would encode it again). model_construct:
    # compact JSON has no line break and a position is digits, which is all the
    # validation would check.
    return ServerSentEvent.model_construct(
        raw_data=message.data, id=message.id, event=message.event
    )
