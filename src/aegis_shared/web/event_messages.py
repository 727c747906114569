"""The messages of a Server-Sent Events stream from the event log, for any framework.

:func:`event_messages` turns what a hub subscription yields into :class:`EventMessage`
values (the SSE fields), and :func:`parse_last_event_id` reads the ``Last-Event-ID``
header a reconnecting ``EventSource`` sends. FastAPI's endpoints
(:mod:`aegis_shared.web.events`) and Litestar's (:mod:`aegis_shared.litestar.events`)
wrap them in their own SSE types; the stream's content and its resume rule are the same
on both. Needs no web framework.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from typing import Final, NamedTuple, TypeVar

from aegis_shared.events import Event, EventHub, Trimmed, check_channel
from aegis_shared.events.reading import check_position

#: The answer to a malformed ``Last-Event-ID`` (a 400, before the stream starts).
LAST_EVENT_ID_ERROR: Final = (
    "Last-Event-ID must be the id of an event of this stream (an integer >= 0); "
    "reconnect without it to follow new events only"
)


T = TypeVar("T")


class EventMessage(NamedTuple):
    """One SSE message: ``data`` (JSON text; ``None`` for a comment), ``id``, ``event``
    (the event name, ``None`` for the default ``message``) and ``comment``."""

    data: str | None
    id: str | None = None
    event: str | None = None
    comment: str | None = None


def parse_last_event_id(value: str | None) -> int | None:
    """The position a reconnecting ``EventSource`` resumes after (its ``Last-Event-ID``
    header's value), or ``None`` when it sent none (a first connection).

    Raises ``ValueError`` (:data:`LAST_EVENT_ID_ERROR`) for anything but an integer >= 0.
    """
    if value is None or not value.strip():
        return None
    try:
        return check_position(int(value.strip()))
    except ValueError:
        raise ValueError(LAST_EVENT_ID_ERROR) from None


def event_messages(
    hub: EventHub, channel: str, *, after: int | None = None
) -> AsyncGenerator[EventMessage, None]:
    """The events of ``channel`` as :class:`EventMessage` values: ``id`` = position, ``data``
    = the published JSON value. ``after``: replay from the log after that position first;
    ``None``: new events only. A subscriber that fell behind gets a comment
    (``resync after N``) and then the events it missed. One whose next events were removed
    by retention gets a named event ``resync`` (data ``{"after": N, "resume_after": M}``,
    id ``M``), so a page reloads its state and a reconnect resumes after ``M``.

    Raises ``ValueError`` at once (not at the first event) for a bad channel or ``after``.
    Map them to a framework's type with :func:`converted`, which keeps the subscription's
    end tied to the stream's.
    """
    check_channel(channel)
    if after is not None:
        check_position(after)
    return _messages(hub, channel, after)


async def _messages(
    hub: EventHub, channel: str, after: int | None
) -> AsyncGenerator[EventMessage, None]:
    async with hub.subscribe(channel, after=after) as events:
        async for item in events:
            if isinstance(item, Event):
                # The JSON text as published (a published None stays "null"), encoded once
                # for every subscriber.
                text = item.text or json.dumps(item.data, ensure_ascii=False, separators=(",", ":"))
                yield EventMessage(text, id=str(item.position))
            elif isinstance(item, Trimmed):
                data = {"after": item.after, "resume_after": item.resume_after}
                yield EventMessage(
                    json.dumps(data, separators=(",", ":")),
                    id=str(item.resume_after),
                    event="resync",
                )
            else:
                yield EventMessage(None, comment=f"resync after {item.after}")


async def converted(
    messages: AsyncGenerator[EventMessage, None], convert: Callable[[EventMessage], T]
) -> AsyncIterator[T]:
    """``messages`` (from :func:`event_messages`) as ``convert`` makes them: a framework's
    own SSE type. Closing this stream (the client went away) closes ``messages`` at once,
    and with it the subscription, rather than whenever the garbage collector gets to it."""
    async with aclosing(messages) as stream:
        async for message in stream:
            yield convert(message)
