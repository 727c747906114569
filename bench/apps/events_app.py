"""The live-data bench's SSE app (``python -m bench events``), one per contender, chosen by
``BENCH_EVENTS_KIND``; every contender streams on FastAPI's own ``fastapi.sse``:

* ``ours``: ``EventHub`` + ``event_stream`` on a ``DatabaseManager`` (pool_size=5), the log
  in PostgreSQL, LISTEN on one connection of the hub's own.
* ``broadcaster-postgres`` / ``broadcaster-redis``: encode/broadcaster's ``Broadcast``, one
  per process, ``subscribe(channel)`` per stream.
* ``redis``: the hand-written pattern, a Redis pub/sub connection per stream.
* ``sse-only``: a stream that waits forever and sends nothing but fastapi.sse's keep-alive:
  what an idle connection costs before any subscription (the idle case's baseline).

``GET /events/{channel}`` streams, ``GET /stats`` tells the bench what the process holds:
its resident memory and CPU time, and for ours the pool and the hub's reads.
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.sse import EventSourceResponse, ServerSentEvent

KIND = os.environ.get("BENCH_EVENTS_KIND", "ours")
PG_URL = os.environ.get("BENCH_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/aegis_bench")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
POOL_SIZE = int(os.environ.get("BENCH_EVENTS_POOL_SIZE", "5"))
#: The bench's channels are room-0 .. room-99; /stats adds the hub's reads over them.
STATS_CHANNELS = 100


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _process_stats() -> dict[str, Any]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "pid": os.getpid(),
        "rss_kib": _rss_kib(),
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "monotonic": time.monotonic(),
    }


def _ours() -> FastAPI:
    from aegis_shared.database import DatabaseManager
    from aegis_shared.events import EventHub
    from aegis_shared.web.events import event_stream

    db = DatabaseManager(PG_URL, pool_size=POOL_SIZE, max_overflow=0)
    hub = EventHub(db)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with hub:
            yield
        await db.close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/events/{channel}", response_class=EventSourceResponse)
    async def events(channel: str) -> AsyncIterator[ServerSentEvent]:
        async for message in event_stream(hub, channel):
            yield message

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return {
            **_process_stats(),
            "pool": db.pool_status(),
            "reads": sum(hub.reads(f"room-{i}") for i in range(STATS_CHANNELS)),
            "listener_pid": hub.listener_pid,
            "listener_connections": hub.listener_connections,
        }

    return app


def _broadcaster(url: str) -> FastAPI:
    from broadcaster import Broadcast

    broadcast = Broadcast(url)
    # broadcaster's postgres backend LISTENs on its one asyncpg connection, which takes one
    # operation at a time: concurrent subscribes fail with "another operation is in
    # progress". A user has to serialize them; so does the bench (redis needs none, and
    # pays the same uncontended lock).
    subscribing = asyncio.Lock()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await broadcast.connect()
        yield
        await broadcast.disconnect()

    app = FastAPI(lifespan=lifespan)

    @app.get("/events/{channel}", response_class=EventSourceResponse)
    async def events(channel: str) -> AsyncIterator[ServerSentEvent]:
        subscription = broadcast.subscribe(channel)
        async with subscribing:
            subscriber = await subscription.__aenter__()
        try:
            async for event in subscriber:  # type: ignore[union-attr]
                yield ServerSentEvent(raw_data=event.message)
        finally:
            async with subscribing:  # UNLISTEN goes through the same connection
                await subscription.__aexit__(None, None, None)

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return _process_stats()

    return app


def _redis() -> FastAPI:
    from redis import asyncio as redis

    # One pub/sub connection per stream: the pool must allow as many (redis-py stops
    # at 100 by default, with "Too many connections").
    client = redis.Redis.from_url(REDIS_URL, max_connections=20_000)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await client.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.get("/events/{channel}", response_class=EventSourceResponse)
    async def events(channel: str) -> AsyncIterator[ServerSentEvent]:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(channel)
        try:
            async for message in pubsub.listen():
                if message["type"] == "message":
                    yield ServerSentEvent(raw_data=message["data"].decode())
        finally:
            await pubsub.aclose()

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return _process_stats()

    return app


def _sse_only() -> FastAPI:
    app = FastAPI()
    forever = asyncio.Event()

    @app.get("/events/{channel}", response_class=EventSourceResponse)
    async def events(channel: str) -> AsyncIterator[ServerSentEvent]:
        await forever.wait()
        yield ServerSentEvent(comment="never")

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return _process_stats()

    return app


def _app() -> FastAPI:
    if KIND == "sse-only":
        return _sse_only()
    if KIND == "ours":
        return _ours()
    if KIND == "broadcaster-postgres":
        return _broadcaster(PG_URL.replace("postgresql+asyncpg://", "postgres://"))
    if KIND == "broadcaster-redis":
        return _broadcaster(REDIS_URL)
    if KIND == "redis":
        return _redis()
    raise SystemExit(
        f"BENCH_EVENTS_KIND={KIND!r}: use ours, broadcaster-postgres, broadcaster-redis or redis"
    )


app = _app()
