"""1,000 open SSE streams on a pool of 5: each reads the database once a tick and holds no
pooled connection in between, so none waits for the pool, let alone times out.

A real uvicorn server and 1,000 real clients over loopback. The clients are raw asyncio
sockets rather than httpx clients: a thousand httpx clients cost more CPU than the server
under test on a 2-CPU machine, and all a client has to do here is count SSE messages.
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import AsyncIterator
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI
from fastapi.sse import EventSourceResponse
from sqlalchemy import func, select

from aegis_shared.database import DatabaseManager
from aegis_shared.errors.exceptions import PoolTimeoutError
from tests.conftest import MakeDb
from tests.http import serve
from tests.models import User

STREAMS = 1000
TICKS = 3
TIMEOUT = 15


@pytest.fixture
def enough_file_descriptors() -> None:
    """Each stream is two sockets (client and server) in this one process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * STREAMS + 512
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def no_check() -> int:
    """Stands for the endpoint's checks (they run before the stream, see
    test_sse_endpoints.py)."""
    return 0


class Streams:
    """The server side: every stream waits for the same tick, then reads once."""

    def __init__(self, db: DatabaseManager) -> None:
        self.db = db
        self.ticks = [asyncio.Event() for _ in range(TICKS)]
        self.opened = 0
        self.reads = 0
        self.pool_timeouts = 0
        self.errors: list[BaseException] = []

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/users/count", response_class=EventSourceResponse)
        async def user_count(_: Annotated[int, Depends(no_check)]) -> AsyncIterator[Any]:
            self.opened += 1
            for tick in self.ticks:
                await tick.wait()
                try:
                    async with self.db.session() as session:
                        count = await session.scalar(select(func.count()).select_from(User))
                except PoolTimeoutError:
                    self.pool_timeouts += 1
                    raise
                except BaseException as exc:
                    self.errors.append(exc)
                    raise
                self.reads += 1
                yield {"users": count}

        return app


async def client(base: str, received: list[int], index: int) -> None:
    """One SSE client on a raw socket: counts the ``data:`` lines it gets, then closes."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        request = f"GET /users/count HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n"
        writer.write(request.encode())
        status = await reader.readline()
        assert status.startswith(b"HTTP/1.1 200"), status
        while received[index] < TICKS:
            line = await reader.readline()
            if not line:
                raise AssertionError(f"stream {index} ended after {received[index]} messages")
            # Chunked encoding: a data line is preceded by its chunk size, which never
            # starts with "data:".
            if line.startswith(b"data:"):
                received[index] += 1
    finally:
        writer.close()


async def until(condition: Any) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not condition():  # noqa: ASYNC110 (polls plain attributes)
            await asyncio.sleep(0.02)


@pytest.mark.usefixtures("enough_file_descriptors")
@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mariadb"], indirect=True)
async def test_1000_streams_on_a_pool_of_5_never_wait_for_it(make_db: MakeDb) -> None:
    db = await make_db(pool_size=5, max_overflow=0, pool_timeout=10)
    async with db.session() as session:
        session.add(User(email="a@example.com", name="A"))
        await session.commit()
    streams = Streams(db)
    received = [0] * STREAMS
    async with serve(streams.app()) as base:
        clients = [asyncio.create_task(client(base, received, i)) for i in range(STREAMS)]
        try:
            # Every stream open and idle (it has taken the check's dependency and waits for
            # its first tick): none holds a pooled connection.
            await until(lambda: bool(_failed(clients)) or streams.opened == STREAMS)
            await asyncio.sleep(0.5)
            assert db.pool_status()["main"]["checked_out"] == 0
            for number, tick in enumerate(streams.ticks, start=1):
                tick.set()
                await until(lambda n=number: min(received) >= n or _failed(clients))
                assert min(received) == number, (
                    _failed(clients)[:3],
                    streams.errors,
                    streams.pool_timeouts,
                )
                # Between reads every stream idles with nothing checked out.
                assert db.pool_status()["main"]["checked_out"] == 0
                await asyncio.sleep(0.5 if number < TICKS else 0)
            async with asyncio.timeout(TIMEOUT):
                await asyncio.gather(*clients)
        finally:
            for task in clients:
                task.cancel()
            await asyncio.gather(*clients, return_exceptions=True)
    assert streams.reads == STREAMS * TICKS
    assert streams.pool_timeouts == 0
    assert streams.errors == []
    assert db.pool_status()["main"]["checked_out"] == 0


def _failed(clients: list[asyncio.Task[None]]) -> list[BaseException]:
    return [e for t in clients if t.done() and (e := t.exception()) is not None]
