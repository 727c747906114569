"""SSE over a real uvicorn server and a real streaming client: ``id:`` is the position, a
reconnect with ``Last-Event-ID`` resumes with no gap and no duplicate, a bad header is a
400 before the stream starts, and a client that leaves ends its subscription."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi.sse import EventSourceResponse, ServerSentEvent

from aegis_shared.database import DatabaseManager
from aegis_shared.events import EventHub, publish
from aegis_shared.web.events import event_stream, last_event_id
from tests import sse
from tests.http import serve

TIMEOUT = 10


def make_app(hub: EventHub) -> FastAPI:
    app = FastAPI()

    @app.get("/events/{channel}", response_class=EventSourceResponse)
    async def events(
        channel: str, after: int | None = Depends(last_event_id)
    ) -> AsyncIterator[ServerSentEvent]:
        async for message in event_stream(hub, channel, after=after):
            yield message

    return app


async def send(db: DatabaseManager, channel: str, *values: Any) -> None:
    async with db.session() as session:
        for value in values:
            await publish(session, channel, value)


async def read_messages(lines: AsyncIterator[str], count: int) -> list[tuple[int, Any]]:
    """The next ``count`` SSE messages with an id off ``lines`` (one response's
    ``aiter_lines()``), as (id, decoded data)."""
    messages: list[tuple[int, Any]] = []
    async with asyncio.timeout(TIMEOUT):
        async for fields in sse.messages(lines):
            if "id" in fields:
                messages.append((int(fields["id"]), json.loads(fields["data"])))
                if len(messages) == count:
                    return messages
    raise AssertionError(f"the stream ended after {messages}")


async def until(condition: Any) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not condition():  # noqa: ASYNC110 (polls plain attributes)
            await asyncio.sleep(0.01)


AppFor = Callable[[EventHub], Any]


async def check_resume(edb: DatabaseManager, app_for: AppFor, *, lifespan: str = "off") -> None:
    """``GET /events/orders`` of ``app_for(hub)`` (FastAPI's or Litestar's) resumes from
    ``Last-Event-ID`` with no gap and no duplicate, and a client that leaves ends its
    subscription."""
    async with (
        EventHub(edb, poll_min=0.02, poll_max=0.2) as hub,
        serve(app_for(hub), lifespan=lifespan) as base,
        httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as client,
    ):
        async with client.stream("GET", "/events/orders") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            await until(lambda: "orders" in hub._channels)
            await hub._channels["orders"].ready()
            await asyncio.sleep(0.05)
            await send(edb, "orders", {"n": 1}, None)
            await send(edb, "orders", "three")
            first = await read_messages(response.aiter_lines(), 3)
        assert first == [(1, {"n": 1}), (2, None), (3, "three")]
        await until(lambda: "orders" not in hub._channels)  # the subscription ended with it

        await send(edb, "orders", 4, 5)  # while nobody is connected
        headers = {"Last-Event-ID": "3"}
        async with client.stream("GET", "/events/orders", headers=headers) as response:
            lines = response.aiter_lines()
            replayed = await read_messages(lines, 2)
            await send(edb, "orders", 6)
            live = await read_messages(lines, 1)
        assert replayed + live == [(4, 4), (5, 5), (6, 6)]
        await until(lambda: not hub._channels)
    assert edb.pool_status()["main"]["checked_out"] == 0


async def check_bad_last_event_ids(
    edb: DatabaseManager, app_for: AppFor, *, lifespan: str = "off"
) -> None:
    """A malformed ``Last-Event-ID`` is a 400 before any subscription."""
    async with (
        EventHub(edb) as hub,
        serve(app_for(hub), lifespan=lifespan) as base,
        httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as client,
    ):
        for bad in ("abc", "-1", "1.5"):
            response = await client.get("/events/orders", headers={"Last-Event-ID": bad})
            assert response.status_code == 400, bad
            assert "Last-Event-ID must be the id of an event" in response.text
        assert not hub._channels


async def test_stream_resumes_from_last_event_id_without_gap_or_duplicate(
    edb: DatabaseManager,
) -> None:
    await check_resume(edb, make_app)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_bad_last_event_id_is_a_400_before_the_stream(edb: DatabaseManager) -> None:
    await check_bad_last_event_ids(edb, make_app)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_event_stream_refuses_a_bad_channel_at_once(edb: DatabaseManager) -> None:
    async with EventHub(edb) as hub:
        with pytest.raises(ValueError, match="invalid event channel"):
            event_stream(hub, "bad channel")
        with pytest.raises(ValueError, match="after=-2 is not a position"):
            event_stream(hub, "orders", after=-2)
