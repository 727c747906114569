"""SSE from the event hub through Litestar's own ``ServerSentEvent``, under uvicorn with a
real streaming client, on SQLite and PostgreSQL: ``id:`` is the position, a reconnect with
``Last-Event-ID`` resumes with no gap and no duplicate, a bad header is a 400 before the
stream, retention's gap is a named ``resync`` event, and a client that leaves ends its
subscription."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from litestar import Litestar, get
from litestar.di import Provide
from litestar.response import ServerSentEvent

from aegis_shared.database import DatabaseManager
from aegis_shared.events import EventHub, RetentionPolicy, trim_events
from aegis_shared.litestar import AegisPlugin, event_stream, last_event_id
from tests.http import serve
from tests.test_events_retention import read_sse
from tests.test_events_sse import TIMEOUT, read_messages, send, until

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)


def make_app(db: DatabaseManager, hub: EventHub) -> Litestar:
    @get(
        "/events/{channel:str}",
        dependencies={"after": Provide(last_event_id)},
    )
    async def events(channel: str, after: int | None) -> ServerSentEvent:
        return event_stream(hub, channel, after=after)

    return Litestar(
        route_handlers=[events],
        plugins=[AegisPlugin(db, close_on_shutdown=False)],
        logging_config=None,
    )


async def test_stream_resumes_from_last_event_id_without_gap_or_duplicate(
    edb: DatabaseManager,
) -> None:
    async with (
        EventHub(edb, poll_min=0.02, poll_max=0.2) as hub,
        serve(make_app(edb, hub), lifespan="on") as base,
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


async def test_bad_last_event_id_is_a_400_before_the_stream(edb: DatabaseManager) -> None:
    async with (
        EventHub(edb) as hub,
        serve(make_app(edb, hub), lifespan="on") as base,
        httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as client,
    ):
        for bad in ("abc", "-1", "1.5"):
            response = await client.get("/events/orders", headers={"Last-Event-ID": bad})
            assert response.status_code == 400, bad
            assert "Last-Event-ID must be the id of an event" in response.text
        assert not hub._channels


async def test_resuming_after_trimmed_events_gets_a_resync_event(edb: DatabaseManager) -> None:
    await send(edb, "a", *range(1, 11))
    await trim_events(edb, RetentionPolicy(max_age=None, max_count=4))
    async with (
        EventHub(edb, poll_min=0.02, poll_max=0.2) as hub,
        serve(make_app(edb, hub), lifespan="on") as base,
        httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as client,
    ):
        headers = {"Last-Event-ID": "3"}
        async with client.stream("GET", "/events/a", headers=headers) as response:
            messages = await read_sse(response.aiter_lines(), 5)

    assert messages[0] == {"event": "resync", "id": "6", "data": {"after": 3, "resume_after": 6}}
    assert [(m.get("event"), m["id"], m["data"]) for m in messages[1:]] == [
        (None, "7", 7),
        (None, "8", 8),
        (None, "9", 9),
        (None, "10", 10),
    ]
