"""``events``: live data over Server-Sent Events, ours against encode/broadcaster (postgres
and redis backends) and hand-written Redis pub/sub, each on FastAPI's own ``fastapi.sse``
(bench/apps/events_app.py), on the same workload in one run.

Per contender, two uvicorn worker processes of its app and two client processes of real
SSE clients (raw sockets, h11) over loopback:

* **latency**: 1,000 subscribers (500 per worker, over 10 channels), a publisher at 100
  events/s for ``SECONDS``: the time from just before the publishing transaction to the
  client having parsed the event (``time.monotonic``, one clock for every process of the
  machine), p50 and p99 over every delivery. Every contender does the same work per event:
  a committed INSERT (ours: ``publish`` in a ``db.session()``, which writes the event row;
  the peers: a row into ``bench_messages`` through asyncpg, then their publish).
* **killed connection**: the same at 100 events/s while the connection each worker listens
  on is killed halfway (``pg_terminate_backend`` of the LISTEN backends; Redis: ``CLIENT
  KILL TYPE pubsub``): deliveries lost and duplicated.
* **saturation**: 100 subscribers, 8 publishers flat out for 5 s: events per second
  delivered to every subscriber of their channel.
* **idle** (ours): 10,000 SSE connections on one worker with pool_size=5: resident memory
  per connection, pooled connections checked out (goal 0), the worker's CPU while they idle
  (fastapi.sse sends a keep-alive comment every 15 s), and one event to each channel
  afterwards, every connection receiving it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from array import array
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import asyncpg
import h11
import httpx

from bench.common import (
    PG_URL,
    RESULTS_DIR,
    ROOT,
    Measurement,
    asyncpg_dsn,
    print_table,
    recreate_database,
    write_results,
)

KINDS = {
    "ours": "ours: EventHub + event_stream (log in PostgreSQL)",
    "broadcaster-postgres": "encode/broadcaster, postgres backend",
    "broadcaster-redis": "encode/broadcaster, redis backend",
    "redis": "Redis pub/sub, a connection per stream",
}
OURS = KINDS["ours"]
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
WORKERS = 2
CLIENT_PROCESSES = 2
#: The goal's workload: 1,000 subscribers on 100 channels (10 each), 100 events/s in all,
#: 1,000 deliveries/s. The heavy fan-out case puts them on 10 channels (100 each):
#: 10,000 deliveries/s, which saturates this machine's 2 CPUs (clients included).
CHANNELS = 100
HEAVY_CHANNELS = 10
RATE = 100
SATURATION_SUBSCRIBERS = 100
SATURATION_PUBLISHERS = 8
SATURATION_SECONDS = 5
#: BENCH_EVENTS_QUICK=1: a smoke run of the same code at a tenth of the sizes.
QUICK = os.environ.get("BENCH_EVENTS_QUICK") == "1"
SUBSCRIBERS = 100 if QUICK else 1_000
SECONDS = 3 if QUICK else 10
IDLE_CONNECTIONS = 1_000 if QUICK else 10_000
IDLE_SECONDS = 3 if QUICK else 20


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- the apps -----------------------------------------------------------------------------


class Worker:
    """One uvicorn process of bench/apps/events_app.py."""

    def __init__(self, kind: str, pool_size: int = 5) -> None:
        self.kind = kind
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "uvicorn", "bench.apps.events_app:app"]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"]
        command += ["--no-access-log", "--backlog", "4096"]
        with contextlib.suppress(ImportError):
            import uvloop  # noqa: F401

            command += ["--loop", "uvloop"]
        with contextlib.suppress(ImportError):
            import httptools  # noqa: F401

            command += ["--http", "httptools"]
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "BENCH_EVENTS_KIND": kind,
            "BENCH_PG_URL": PG_URL,
            "BENCH_REDIS_URL": REDIS_URL,
            "BENCH_EVENTS_POOL_SIZE": str(pool_size),
        }
        # The peers' tracebacks (a killed connection) go to a log, not over the tables.
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        self.log = RESULTS_DIR / f"events-{kind}-{self.port}.log"
        with self.log.open("wb") as sink:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, preexec_fn=_raise_file_limit, stderr=sink
            )

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"events app exited with {self.process.returncode} at start")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/stats", timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise SystemExit("events app not ready")
            time.sleep(0.2)

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/stats", timeout=10).json())

    def stop(self) -> int:
        """Stop the worker; returns the tracebacks it logged (and drops its log)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if not self.log.exists():
            return 0
        tracebacks = self.log.read_text(errors="replace").count("Traceback")
        self.log.unlink()
        return tracebacks


# -- the clients (their own processes) ----------------------------------------------------


class _Sub:
    """One SSE connection: the event numbers it received and when."""

    def __init__(self) -> None:
        self.numbers = array("q")
        self.latencies = array("d")
        self.last = 0.0


async def _stream(host: str, port: int, path: str, sub: _Sub, ready: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    connection = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method="GET",
        target=path,
        headers=[("Host", f"{host}:{port}"), ("Accept", "text/event-stream")],
    )
    writer.write(connection.send(request) + connection.send(h11.EndOfMessage()))
    buffer = b""
    try:
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                connection.receive_data(chunk)
                continue
            if isinstance(event, h11.Response):
                if event.status_code != 200:
                    raise SystemExit(f"GET {path} gave {event.status_code}")
                ready.set()
            elif isinstance(event, h11.Data):
                buffer += bytes(event.data)
                *messages, buffer = buffer.split(b"\n\n")
                now = time.monotonic()
                for message in messages:
                    for line in message.split(b"\n"):
                        if line.startswith(b"data:"):
                            data = json.loads(line[5:])
                            sub.numbers.append(int(data["n"]))
                            sub.latencies.append(now - float(data["t"]))
                            sub.last = now
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return
    finally:
        writer.close()


def _client_main(pipe: Connection, targets: list[tuple[str, int, str]]) -> None:
    """A client process: open ``targets`` (host, port, path), report, record until told."""
    _raise_file_limit()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(_client(pipe, targets))


async def _client(pipe: Connection, targets: list[tuple[str, int, str]]) -> None:
    loop = asyncio.get_running_loop()
    subs = [_Sub() for _ in targets]
    readies = [asyncio.Event() for _ in targets]
    gate = asyncio.Semaphore(200)  # connects at a time, under uvicorn's backlog

    async def open_one(index: int) -> None:
        host, port, path = targets[index]
        async with gate:
            task = asyncio.create_task(_stream(host, port, path, subs[index], readies[index]))
            tasks.append(task)
            await readies[index].wait()

    tasks: list[asyncio.Task[None]] = []
    await asyncio.gather(*(open_one(i) for i in range(len(targets))))
    pipe.send("connected")
    while True:
        command = await loop.run_in_executor(None, pipe.recv)
        if command == "counts":
            pipe.send([len(sub.numbers) for sub in subs])
        elif command == "stop":
            break
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    pipe.send([(sub.numbers.tobytes(), sub.latencies.tobytes(), sub.last) for sub in subs])


class Clients:
    """SSE client processes spread over the workers and channels."""

    def __init__(self, workers: list[Worker], subscribers: int, channels: int) -> None:
        self.channel_of: list[str] = []
        targets: list[list[tuple[str, int, str]]] = [[] for _ in range(CLIENT_PROCESSES)]
        for i in range(subscribers):
            worker = workers[i % len(workers)]
            channel = f"room-{(i // len(workers)) % channels}"
            targets[i % CLIENT_PROCESSES].append(("127.0.0.1", worker.port, f"/events/{channel}"))
            self.channel_of.append(channel)
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes = []
        self.order: list[list[int]] = [[] for _ in range(CLIENT_PROCESSES)]
        for i in range(subscribers):
            self.order[i % CLIENT_PROCESSES].append(i)
        for part in targets:
            parent, child = context.Pipe()
            process = context.Process(target=_client_main, args=(child, part), daemon=True)
            process.start()
            self.pipes.append(parent)
            self.processes.append(process)
        for pipe in self.pipes:
            if not pipe.poll(120):
                raise SystemExit("SSE clients did not connect within 120 s")
            assert pipe.recv() == "connected"

    def counts(self) -> list[int]:
        result = [0] * len(self.channel_of)
        for pipe, order in zip(self.pipes, self.order, strict=True):
            pipe.send("counts")
            for index, count in zip(order, pipe.recv(), strict=True):
                result[index] = count
        return result

    def finish(self) -> list[tuple[array[int], array[float], float]]:
        result: list[Any] = [None] * len(self.channel_of)
        for pipe in self.pipes:
            pipe.send("stop")
        for pipe, order in zip(self.pipes, self.order, strict=True):
            for index, (numbers, latencies, last) in zip(order, pipe.recv(), strict=True):
                n, lat = array("q"), array("d")
                n.frombytes(numbers)
                lat.frombytes(latencies)
                result[index] = (n, lat, last)
        for process in self.processes:
            process.join(10)
        return result


# -- publishing ---------------------------------------------------------------------------


class Publisher:
    """The same work per event for every contender: a committed INSERT, then the publish."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    async def __aenter__(self) -> Publisher:
        if self.kind == "ours":
            from aegis_shared.database import DatabaseManager

            self.db = DatabaseManager(PG_URL, pool_size=SATURATION_PUBLISHERS, max_overflow=0)
        else:
            self.pool = await asyncpg.create_pool(
                asyncpg_dsn(), min_size=1, max_size=SATURATION_PUBLISHERS
            )
            if self.kind == "broadcaster-postgres":
                from broadcaster import Broadcast

                url = PG_URL.replace("postgresql+asyncpg://", "postgres://")
                self.broadcasts = [Broadcast(url) for _ in range(SATURATION_PUBLISHERS)]
            else:
                from redis import asyncio as redis

                self.redis = redis.Redis.from_url(REDIS_URL)
            if self.kind == "broadcaster-redis":
                from broadcaster import Broadcast

                self.broadcasts = [Broadcast(REDIS_URL) for _ in range(SATURATION_PUBLISHERS)]
            for broadcast in getattr(self, "broadcasts", []):
                await broadcast.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.kind == "ours":
            from aegis_shared.events import wakeups

            await wakeups.drain(self.db.engine.sync_engine)
            await self.db.close()
            return
        for broadcast in getattr(self, "broadcasts", []):
            await broadcast.disconnect()
        if hasattr(self, "redis"):
            await self.redis.aclose()
        await self.pool.close()

    async def send(self, channel: str, n: int, slot: int = 0) -> None:
        stamp = time.monotonic()
        if self.kind == "ours":
            from aegis_shared.events import publish

            async with self.db.session() as session:
                await publish(session, channel, {"t": stamp, "n": n})
            return
        message = json.dumps({"t": stamp, "n": n})
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO bench_messages (channel, data) VALUES ($1, $2)", channel, message
            )
        if self.kind == "redis":
            await self.redis.publish(channel, message)
        else:
            await self.broadcasts[slot].publish(channel, message)


async def _paced(
    publisher: Publisher, first: int, count: int, rate: float, channels: int = CHANNELS
) -> None:
    start = time.monotonic()
    for i in range(count):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await publisher.send(f"room-{(first + i) % channels}", first + i)


async def _flat_out(
    publisher: Publisher, first: int, seconds: float, channels: int = HEAVY_CHANNELS
) -> int:
    counter = iter(range(first, first + 10_000_000))
    deadline = time.monotonic() + seconds

    async def one(slot: int) -> int:
        sent = 0
        while time.monotonic() < deadline:
            n = next(counter)
            await publisher.send(f"room-{n % channels}", n, slot)
            sent += 1
        return sent

    return sum(await asyncio.gather(*(one(s) for s in range(SATURATION_PUBLISHERS))))


async def _warm_up(publisher: Publisher, clients: Clients, channels: int = CHANNELS) -> int:
    """Publish until every subscriber has received something; returns the next number."""
    n = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for _ in range(channels):
            await publisher.send(f"room-{n % channels}", n)
            n += 1
        await asyncio.sleep(0.2)
        if min(clients.counts()) > 0:
            return n + 1_000_000  # measured numbers start far above the warm-up's
    raise SystemExit("subscribers never received the warm-up events")


async def _kill_listeners(kind: str, workers: list[Worker]) -> int:
    if kind in ("broadcaster-redis", "redis"):
        from redis import asyncio as redis

        client = redis.Redis.from_url(REDIS_URL)
        try:
            return int(await client.execute_command("CLIENT", "KILL", "TYPE", "pubsub"))
        finally:
            await client.aclose()
    conn = await asyncpg.connect(asyncpg_dsn())
    try:
        if kind == "ours":
            pids = [w.stats()["listener_pid"] for w in workers]
        else:
            rows = await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND query ILIKE 'LISTEN%' AND pid <> pg_backend_pid()"
            )
            pids = [row["pid"] for row in rows]
        for pid in pids:
            await conn.execute("SELECT pg_terminate_backend($1)", pid)
        return len(pids)
    finally:
        await conn.close()


@dataclass
class Outcome:
    p50_ms: float | None
    p99_ms: float | None
    expected: int
    delivered: int
    lost: int
    duplicated: int
    last_delivery: float


def _outcome(
    clients: Clients, results: list[Any], sent: dict[str, set[int]], first: int
) -> Outcome:
    latencies: list[float] = []
    expected = delivered = lost = duplicated = 0
    last = 0.0
    for channel, (numbers, lats, final) in zip(clients.channel_of, results, strict=True):
        want = sent.get(channel, set())
        got = [(n, lat) for n, lat in zip(numbers, lats, strict=True) if n >= first]
        seen = [n for n, _ in got]
        unique = set(seen)
        expected += len(want)
        delivered += len(unique & want)
        lost += len(want - unique)
        duplicated += len(seen) - len(unique)
        latencies.extend(lat for _, lat in got)
        last = max(last, final)
    latencies.sort()

    def pct(p: float) -> float | None:
        if not latencies:
            return None
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return Outcome(pct(0.50), pct(0.99), expected, delivered, lost, duplicated, last)


def _sent(first: int, count: int, channels: int = CHANNELS) -> dict[str, set[int]]:
    sent: dict[str, set[int]] = {}
    for n in range(first, first + count):
        sent.setdefault(f"room-{n % channels}", set()).add(n)
    return sent


async def _settle(clients: Clients, seconds: float) -> None:
    """Wait (at most ``seconds``) until what the clients received stops growing."""
    deadline = time.monotonic() + seconds
    previous = -1
    while time.monotonic() < deadline:
        current = sum(clients.counts())
        if current == previous:
            return
        previous = current
        await asyncio.sleep(1.0)


async def _latency_run(
    kind: str, publisher: Publisher, workers: list[Worker], channels: int
) -> dict[str, Any]:
    """SUBSCRIBERS on ``channels`` channels, RATE events/s for SECONDS."""
    out: dict[str, Any] = {}
    clients = Clients(workers, SUBSCRIBERS, channels)
    first = await _warm_up(publisher, clients, channels)
    before = [w.stats() for w in workers]
    count = RATE * SECONDS
    await _paced(publisher, first, count, RATE, channels)
    await _settle(clients, 5.0)
    after = [w.stats() for w in workers]
    out["worker_cpu_percent"] = [
        round(100 * (a["cpu_s"] - b["cpu_s"]) / (a["monotonic"] - b["monotonic"]), 1)
        for a, b in zip(after, before, strict=True)
    ]
    out["latency"] = _outcome(clients, clients.finish(), _sent(first, count, channels), first)
    if kind == "ours":
        reads = sum(a["reads"] - b["reads"] for a, b in zip(after, before, strict=True))
        out["reads_per_event_per_process"] = reads / count / WORKERS
        out["pool_checked_out"] = [a["pool"] for a in after]
    out["deliveries_expected"] = count * (SUBSCRIBERS // channels)
    return out


async def _run_kind(kind: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    workers = [Worker(kind) for _ in range(WORKERS)]
    try:
        for worker in workers:
            worker.wait_ready()
        async with Publisher(kind) as publisher:
            # Latency at a steady rate, 1,000 subscribers: the goal's spread, then heavy.
            out.update(await _latency_run(kind, publisher, workers, CHANNELS))
            heavy = await _latency_run(kind, publisher, workers, HEAVY_CHANNELS)
            out["heavy"] = heavy["latency"]
            out["heavy_worker_cpu_percent"] = heavy["worker_cpu_percent"]

            # The same with the listening connections killed halfway.
            clients = Clients(workers, SUBSCRIBERS, CHANNELS)
            first = await _warm_up(publisher, clients)
            half = RATE * SECONDS // 2
            await _paced(publisher, first, half, RATE)
            killed = await _kill_listeners(kind, workers)
            await _paced(publisher, first + half, half, RATE)
            await asyncio.sleep(1.0)  # the hub's reconnect backoff starts at 0.1 s
            await _settle(clients, 8.0)
            result = _outcome(clients, clients.finish(), _sent(first, 2 * half), first)
            out["killed"] = result
            out["killed_connections"] = killed
            # A peer that lost its listener does not recover; fresh workers for saturation.
        out["worker_tracebacks"] = sum(worker.stop() for worker in workers)
        workers = [Worker(kind) for _ in range(WORKERS)]
        for worker in workers:
            worker.wait_ready()
        async with Publisher(kind) as publisher:
            clients = Clients(workers, SATURATION_SUBSCRIBERS, HEAVY_CHANNELS)
            first = await _warm_up(publisher, clients, HEAVY_CHANNELS)
            start = time.monotonic()
            published = await _flat_out(publisher, first, SATURATION_SECONDS)
            per_sub = SATURATION_SUBSCRIBERS // HEAVY_CHANNELS
            await _settle(clients, 15.0)
            sent = _sent(first, published, HEAVY_CHANNELS)
            result = _outcome(clients, clients.finish(), sent, first)
            elapsed = max(result.last_delivery - start, SATURATION_SECONDS)
            complete = result.delivered / max(per_sub, 1)
            out["saturation_events_per_s"] = complete / elapsed
            out["saturation_published"] = published
            out["saturation"] = result
    finally:
        out["worker_tracebacks"] = out.get("worker_tracebacks", 0) + sum(
            worker.stop() for worker in workers
        )
    return out


async def _idle(kind: str) -> dict[str, Any]:
    worker = Worker(kind, pool_size=5)
    try:
        worker.wait_ready()
        before = worker.stats()
        clients = Clients([worker], IDLE_CONNECTIONS, 100)
        await asyncio.sleep(2)
        connected = worker.stats()
        await asyncio.sleep(IDLE_SECONDS)
        idle = worker.stats()
        received = None
        if kind == "ours":
            async with Publisher(kind) as publisher:
                for i in range(100):
                    await publisher.send(f"room-{i}", 2_000_000 + i)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and min(clients.counts()) < 1:  # noqa: ASYNC110 (polls other processes)
                await asyncio.sleep(0.5)
            received = sum(1 for c in clients.counts() if c >= 1)
        clients.finish()
        per_connection = (connected["rss_kib"] - before["rss_kib"]) / IDLE_CONNECTIONS
        cpu = idle["cpu_s"] - connected["cpu_s"]
        wall = idle["monotonic"] - connected["monotonic"]
        return {
            "connections": IDLE_CONNECTIONS,
            "rss_before_kib": before["rss_kib"],
            "rss_connected_kib": connected["rss_kib"],
            "kib_per_connection": per_connection,
            "pool_while_idle": idle.get("pool"),
            "idle_cpu_percent": 100 * cpu / wall,
            "idle_seconds": wall,
            "received_one_event": received,
        }
    finally:
        worker.stop()


async def _prepare() -> None:
    await recreate_database(seed_rows=0)
    from aegis_shared.database import DatabaseManager
    from aegis_shared.events import create_event_tables

    db = DatabaseManager(PG_URL)
    try:
        await create_event_tables(db)
    finally:
        await db.close()
    conn = await asyncpg.connect(asyncpg_dsn())
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_messages "
            "(id bigserial PRIMARY KEY, channel text NOT NULL, data text NOT NULL)"
        )
    finally:
        await conn.close()


async def run(rounds: int = 1) -> None:
    """Every contender in turn, then the idle connections; prints and writes the results."""
    _raise_file_limit()
    await _prepare()
    measurements: list[Measurement] = []
    extras: dict[str, Any] = {}
    # BENCH_EVENTS_KINDS=ours,redis: some contenders only (a quicker look, not the report).
    chosen = os.environ.get("BENCH_EVENTS_KINDS")
    kinds = {k: v for k, v in KINDS.items() if not chosen or k in chosen.split(",")}
    for kind, name in kinds.items():
        print(f"  {name} ...", flush=True)
        out = await _run_kind(kind)
        print(
            f"    workers' CPU: {out['worker_cpu_percent']} % ({CHANNELS} channels), "
            f"{out['heavy_worker_cpu_percent']} % ({HEAVY_CHANNELS} channels)"
        )
        latency: Outcome = out["latency"]
        killed: Outcome = out["killed"]
        heavy: Outcome = out["heavy"]
        note = f"{latency.delivered:,}/{latency.expected:,} delivered"
        heavy_note = f"{heavy.delivered:,}/{heavy.expected:,} delivered"
        wide = f"{SUBSCRIBERS:,} subscribers on {CHANNELS} channels, {RATE}/s"
        crowded = f"{SUBSCRIBERS:,} subscribers on {HEAVY_CHANNELS} channels, {RATE}/s"
        measurements += [
            Measurement(f"commit to client, p50 ({wide})", name, "ms", [latency.p50_ms or 0], note),
            Measurement(f"commit to client, p99 ({wide})", name, "ms", [latency.p99_ms or 0], note),
            Measurement(
                f"commit to client, p50 ({crowded})", name, "ms", [heavy.p50_ms or 0], heavy_note
            ),
            Measurement(
                f"commit to client, p99 ({crowded})", name, "ms", [heavy.p99_ms or 0], heavy_note
            ),
            Measurement(
                "saturation (100 subscribers)",
                name,
                "events/s",
                [out["saturation_events_per_s"]],
                f"{out['saturation_published']:,} published",
            ),
            Measurement(
                "listener killed halfway: deliveries lost",
                name,
                "lost",
                [float(killed.lost)],
                f"of {killed.expected:,}; {killed.duplicated} duplicated; "
                f"{out['killed_connections']} connections killed; "
                f"{out['worker_tracebacks']} tracebacks in the workers' logs",
            ),
        ]
        extras[kind] = {k: (v.__dict__ if isinstance(v, Outcome) else v) for k, v in out.items()}
        if kind == "ours":
            print(
                f"    reads of the log per event per process: "
                f"{out['reads_per_event_per_process']:.2f}; pool after: {out['pool_checked_out']}"
            )
    idle_kinds = ("ours", "sse-only") if not chosen else ()
    idle = {kind: await _idle(kind) for kind in idle_kinds}
    extras["idle"] = idle
    for kind, figures in idle.items():
        print(f"\n  idle, {kind}: {json.dumps(figures)}")
    baselines = {m.case: OURS for m in measurements}
    print_table("Live data: SSE fan-out across 2 workers", measurements, baselines)
    for m in measurements:
        m.extra = extras.get(next(k for k, v in KINDS.items() if v == m.contender), {})
    params = {
        "workers": WORKERS,
        "subscribers": SUBSCRIBERS,
        "channels": CHANNELS,
        "heavy_channels": HEAVY_CHANNELS,
        "rate": RATE,
        "seconds": SECONDS,
        "saturation_subscribers": SATURATION_SUBSCRIBERS,
        "saturation_publishers": SATURATION_PUBLISHERS,
        "idle": idle,
    }
    write_results("events", measurements, [], params, baselines)
