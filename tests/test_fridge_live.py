"""The fridge example's live updates across two uvicorn worker processes, on SQLite,
PostgreSQL and MariaDB: what one tab adds through one process, another tab following
``GET /fridge/events`` through the other process sees, in order, with nothing lost over a
reconnect or a login."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import MetaData
from sqlalchemy.engine import URL

from tests import sse
from tests.conftest import MakeDb
from tests.processes import uvicorn

MILK, EGGS, BUTTER, CARROT, ONION, TOMATO = 1, 2, 3, 4, 5, 6
#: Generous: the test is about arriving, in order, through the other process. The latency
#: each event took is printed (run with -s) and written down in docs/benchmarks.md.
ARRIVAL_TIMEOUT = 5.0


@asynccontextmanager
async def worker(
    db_url: URL, log: Path, target: str = "aegis_demo.fridge.app:app", **extra_env: str
) -> AsyncIterator[str]:
    """``uvicorn <target>`` (the fridge app by default) as its own process; yields its
    base URL."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("DATABASE_")}
    env |= {
        "DATABASE_URL": db_url.render_as_string(hide_password=False),
        "SESSION_COOKIE_SECURE": "false",
        "FRIDGE_ADMIN_TOKEN": "test-admin-token-0123456789",
        **extra_env,
    }
    async with uvicorn(target, env=env, log=log, ready_path="/ingredients") as base:
        yield base


@dataclass
class Message:
    event: str
    id: str | None
    data: Any


@dataclass
class Stream:
    """A real SSE client: reads ``text/event-stream`` off the wire into a queue."""

    response: httpx.Response
    messages: asyncio.Queue[tuple[float, Message]] = field(default_factory=asyncio.Queue)

    async def pump(self) -> None:
        async for fields in sse.messages(self.response.aiter_lines()):
            event = fields.get("event", "message")
            message = Message(event, fields.get("id"), json.loads(fields["data"]))
            self.messages.put_nowait((time.perf_counter(), message))

    async def next(self) -> tuple[float, Message]:
        async with asyncio.timeout(ARRIVAL_TIMEOUT):
            return await self.messages.get()


@asynccontextmanager
async def follow(client: httpx.AsyncClient, **headers: str) -> AsyncIterator[Stream]:
    async with client.stream("GET", "/fridge/events", headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = Stream(response)
        task = asyncio.create_task(stream.pump())
        try:
            yield stream
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await task


@pytest.fixture
async def workers(make_db: MakeDb, db_url: URL, tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """Two worker processes of the fridge app on one fresh database."""
    await make_db(MetaData(), default=False)  # drops every table; the app creates its own
    async with AsyncExitStack() as stack:
        # One after the other: the first creates the tables and the catalogue.
        first = await stack.enter_async_context(worker(db_url, tmp_path / "worker-1.log"))
        second = await stack.enter_async_context(worker(db_url, tmp_path / "worker-2.log"))
        yield first, second


async def test_a_change_in_one_tab_shows_in_another_through_the_other_worker(
    workers: tuple[str, str], backend: str
) -> None:
    one, two = workers
    async with httpx.AsyncClient(base_url=one) as tab_one:
        # A visitor without a fridge has nothing to follow: a real 404, not an empty 200.
        async with httpx.AsyncClient(base_url=two) as stranger:
            missing = await stranger.get("/fridge/events")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/json"

        assert (
            await tab_one.post("/fridge/ingredients", json={"ingredient_ids": [MILK]})
        ).is_success
        async with httpx.AsyncClient(base_url=two, cookies=tab_one.cookies) as tab_two:
            latencies: list[float] = []
            async with follow(tab_two) as stream:
                _, snapshot = await stream.next()
                assert snapshot.event == "snapshot"
                assert [i["name"] for i in snapshot.data["ingredients"]] == ["milk"]
                assert snapshot.id == "1"

                for position, ingredient in enumerate((EGGS, BUTTER, CARROT), start=2):
                    sent = time.perf_counter()
                    body = {"ingredient_ids": [ingredient]}
                    added = await tab_one.post("/fridge/ingredients", json=body)
                    assert added.is_success
                    arrived, message = await stream.next()
                    latencies.append(arrived - sent)
                    assert (message.id, message.data) == (str(position), {"added": [ingredient]})

                removed = await tab_one.request(
                    "DELETE", "/fridge/ingredients", json={"ingredient_ids": [EGGS, ONION]}
                )
                assert removed.json() == {"removed": 1}
                _, message = await stream.next()
                assert (message.id, message.data) == ("5", {"removed": [EGGS, ONION]})
                # Adding what is there already changes nothing: no event (but MariaDB,
                # whose INSERT IGNORE counts rows given, not rows added, says "added").
                await tab_one.post("/fridge/ingredients", json={"ingredient_ids": [MILK]})
                last = "5"
                if backend == "mariadb":
                    _, message = await stream.next()
                    assert message.data == {"added": [MILK]}
                    last = "6"

            # Away for a while: what was added meanwhile comes first when the tab is back.
            await tab_one.post("/fridge/ingredients", json={"ingredient_ids": [ONION]})
            async with follow(tab_two, **{"Last-Event-ID": last}) as stream:
                _, message = await stream.next()
                assert (message.event, message.data) == ("message", {"added": [ONION]})
                assert int(message.id or 0) == int(last) + 1

                # A login gives the session a new id; the fridge, and its stream, stay.
                assert (await tab_one.post("/login", json={"user": "ann"})).is_success
                await tab_one.post("/fridge/ingredients", json={"ingredient_ids": [TOMATO]})
                _, message = await stream.next()
                assert message.data == {"added": [TOMATO]}
                assert stream.messages.empty()

    print(
        f"\n{backend}: commit to the other worker's client, "
        f"median {statistics.median(latencies) * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms (the POST's own round trip included)"
    )


async def test_a_rolled_back_change_publishes_nothing_to_the_other_worker(
    workers: tuple[str, str],
) -> None:
    one, two = workers
    async with httpx.AsyncClient(base_url=one) as tab_one:
        await tab_one.post("/fridge/ingredients", json={"ingredient_ids": [MILK]})
        async with (
            httpx.AsyncClient(base_url=two, cookies=tab_one.cookies) as tab_two,
            follow(tab_two) as stream,
        ):
            await stream.next()  # the snapshot
            # An ingredient that does not exist: the INSERT fails on its foreign key
            # (enforced on SQLite too) and the transaction, with its event, rolls back.
            bad = await tab_one.post("/fridge/ingredients", json={"ingredient_ids": [EGGS, 999]})
            assert bad.status_code >= 400
            good = await tab_one.post("/fridge/ingredients", json={"ingredient_ids": [BUTTER]})
            assert good.is_success
            _, message = await stream.next()
            assert (message.id, message.data) == ("2", {"added": [BUTTER]})
            assert stream.messages.empty()
