"""``sessions``: server-side sessions (issue 4) against starsessions + Redis and raw asyncpg.

Three parts, one run:

(a) **store level**: 1,000 live sessions created up front in each store, then 20,000 reads
    (each session 20 times, in one shuffled order shared by every contender), each a read
    plus the sliding touch, sequentially and from 50 tasks, in two CPU placements (see
    :func:`bench.common.placements`; Redis is pinned like the PostgreSQL backends).
    Contenders: starsessions' ``RedisStore`` through its own ``SessionHandler`` (load, then
    save with the TTL slid by the lifetime: what its middleware does per request with
    ``rolling=True``); an asyncpg pool running one SELECT by key of the session table (the
    anchor); ours, ``SessionStore.get`` with the default ``touch_interval`` of 5 minutes
    (the goal contender) and with ``touch_interval=timedelta(0)`` (a touch written on every
    read, reference; its HOT-update share is read from ``pg_stat_user_tables``). Interleaved
    rounds, median reported (:func:`bench.common.interleave`).

(b) **HTTP**: ``GET /fridge`` with a session cookie of a visitor with 3 ingredients, through
    ``aegis_demo.fridge`` (``bench/apps/fridge_ours_app.py``: our middleware, the fridge in
    PostgreSQL child rows) and the same app on starsessions + Redis
    (``bench/apps/fridge_starsessions_app.py``: the fridge in the session data, names from
    PostgreSQL). 1,000 sessions per app are made through the apps' own
    ``POST /fridge/ingredients``; wrk cycles over their cookies. Set-up as in
    :mod:`bench.http`: one uvicorn worker on a CPU of its own, wrk, Redis and the PostgreSQL
    backends on the other, ``wrk -t1 -c32`` for 10 s per round, apps rotated each round.

(c) **cleanup under load**: 1,000,000 expired sessions with 2 fridge rows each are added to
    ours' tables (server-side ``INSERT ... SELECT``, then ``VACUUM ANALYZE`` and a
    checkpoint, as a settled table would be). The (b) load runs on ours in 5-second wrk
    windows: 4 without cleanup, then back to back while the app itself runs
    ``SessionStore.cleanup_expired(batch_size=1000)`` (``POST /admin/cleanup-sessions``: the
    sweeper's code path, in the app's event loop, on its background pool); a window the
    cleanup ends in is left out. Reported: sessions and child rows deleted per second, and
    the median p99 of the windows during cleanup against without it. The 1,000 live
    sessions stay live throughout (checked after the cleanup: every one still shows its
    fridge).

The touch-every-read reference reads the first 2,000 of the 20,000 (it is slow). Run time:
about 5-6 minutes, a minute of it the insert of the expired rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.cookiejar
import json
import os
import random
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from redis.asyncio import Redis
from starlette.requests import HTTPConnection
from starsessions.serializers import JsonSerializer
from starsessions.session import SessionHandler
from starsessions.stores.redis import RedisStore

from aegis_shared.database import DatabaseManager
from aegis_shared.sessions import ServerSessionMixin, SessionStore, session_key
from bench.common import (
    FRIDGE_ADMIN_TOKEN,
    PG_URL,
    ROOT,
    Goal,
    Job,
    Measurement,
    Placement,
    asyncpg_dsn,
    asyncpg_pin_init,
    evaluate_goals,
    fill_server_version,
    interleave,
    pin_backend,
    pin_engine,
    pin_self,
    pinning_worked,
    placements,
    print_goals,
    print_table,
    recreate_database,
    run_concurrently,
    run_sequentially,
    unpin_self,
    write_results,
)
from bench.http import CONNECTIONS, App, LoadResult, _cpus, _pin_backends, run_wrk
from bench.session_models import BenchSession, BenchSessionTouched, SessionBenchBase

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
#: Key prefixes of the benchmark's Redis keys (store level, HTTP app); removed at the start
#: and at the end of a run.
STORE_PREFIX = "bench.store."
APP_PREFIX = "bench.fridge."

LIFETIME = timedelta(hours=24)
LIFETIME_S = int(LIFETIME.total_seconds())
POOL_SIZE = 10

STARSESSIONS = "starsessions: RedisStore read + write"
PG_SELECT = "asyncpg pool: session SELECT"
OURS = "ours: SessionStore.get, touch every 5 min"
OURS_TOUCH = "ours: SessionStore.get, touch every read"

OURS_APP = "ours: aegis_demo.fridge (SessionMiddleware, PostgreSQL)"
STARS_APP = "starsessions + Redis, SQLModel-style fridge"
APPS = {
    OURS_APP: "bench.apps.fridge_ours_app:app",
    STARS_APP: "bench.apps.fridge_starsessions_app:app",
}
HTTP_CASE = "GET /fridge"

WITHOUT_CLEANUP = "ours: without cleanup"
DURING_CLEANUP = "ours: during cleanup"
AFTER_CLEANUP = "ours: after cleanup"
P99_CASE = "GET /fridge p99, expired sessions waiting"
CLEANUP_CASE = "cleanup of expired sessions during GET /fridge load"


def _data(index: int) -> dict[str, Any]:
    """The session data of the stores' ``index``-th session (the same in every store)."""
    return {"user": f"visitor {index}", "cart": [index % 8 + 1, (index + 3) % 8 + 1]}


def _fridge_of(index: int) -> list[int]:
    """The 3 ingredients (of the 8 in the catalogue) of the ``index``-th HTTP session."""
    return [index % 8 + 1, (index + 3) % 8 + 1, (index + 5) % 8 + 1]


async def _clear_redis(redis: Redis) -> None:
    for prefix in (STORE_PREFIX, APP_PREFIX):
        keys = [key async for key in redis.scan_iter(match=f"{prefix}*", count=1000)]
        for start in range(0, len(keys), 1000):
            await redis.unlink(*keys[start : start + 1000])


async def _redis_pid(redis: Redis) -> int:
    return int((await redis.info("server"))["process_id"])


# -- (a) store level ------------------------------------------------------------------------


class StoreContender:
    name: str
    note = ""
    #: Reads per round when fewer than the scenario's (the first ones of the shared order).
    max_reads: int | None = None

    def __init__(self, placement: Placement) -> None:
        self.placement = placement
        self.ids: list[Any] = []

    async def setup(self, count: int) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        pass

    async def read(self, session_id: Any) -> Any:
        raise NotImplementedError

    def user_of(self, value: Any) -> Any:
        raise NotImplementedError


class Starsessions(StoreContender):
    name = STARSESSIONS
    note = (
        "its SessionHandler: GET + JSON load, then JSON dump + SET EX 86400 (rolling lifetime); "
        "redis-py asyncio with hiredis, its default connection pool"
    )

    async def setup(self, count: int) -> None:
        self.redis = Redis.from_url(REDIS_URL)
        self.store = RedisStore(connection=self.redis, prefix=STORE_PREFIX)
        self.serializer = JsonSerializer()
        for index in range(count):
            handler = self._handler(None)
            await handler.load()
            handler.connection.session.update(_data(index))
            self.ids.append(await handler.save(LIFETIME_S))

    def _handler(self, session_id: str | None) -> SessionHandler:
        connection = HTTPConnection({"type": "http", "headers": []})
        return SessionHandler(connection, session_id, self.store, self.serializer, LIFETIME_S)

    async def close(self) -> None:
        await self.redis.aclose()

    async def read(self, session_id: Any) -> Any:
        handler = self._handler(session_id)
        await handler.load()
        # rolling=True: the middleware saves every loaded, non-empty session with its TTL
        # slid to the full lifetime.
        await handler.save(LIFETIME_S)
        return handler.connection.session

    def user_of(self, value: Any) -> Any:
        return value.get("user")


class Ours(StoreContender):
    name = OURS
    note = "DatabaseManager (pool of 10), default store: a touch is written at most every 5 min"
    model: type[ServerSessionMixin] = BenchSession
    touch_interval = timedelta(minutes=5)

    async def setup(self, count: int) -> None:
        self.db = DatabaseManager(PG_URL, pool_size=POOL_SIZE, max_overflow=0)
        pin_engine(self.db.engine, self.placement)
        self.store = SessionStore(
            self.db, self.model, idle_timeout=LIFETIME, touch_interval=self.touch_interval
        )
        for index in range(count):
            self.ids.append((await self.store.create(_data(index))).id)

    async def close(self) -> None:
        await self.db.close()

    async def read(self, session_id: Any) -> Any:
        return await self.store.get(session_id)

    def user_of(self, value: Any) -> Any:
        return None if value is None else value.data.get("user")

    async def update_counts(self) -> tuple[int, int]:
        """``(n_tup_upd, n_tup_hot_upd)`` of the store's table, with the pending statistics
        of every backend of the pool flushed first."""
        connections = []
        try:
            for _ in range(POOL_SIZE):
                connections.append(await self.db.engine.connect())
            for connection in connections:
                # Flushed when the backend next goes idle, before it answers the ROLLBACK
                # that closing the connection sends.
                await connection.exec_driver_sql("SELECT pg_stat_force_next_flush()")
        finally:
            for connection in connections:
                await connection.close()
        conn = await asyncpg.connect(asyncpg_dsn())
        try:
            row = await conn.fetchrow(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                "WHERE relid = $1::regclass",
                self.model.__tablename__,  # type: ignore[attr-defined]
            )
        finally:
            await conn.close()
        return int(row["n_tup_upd"]), int(row["n_tup_hot_upd"])


class OursTouchEveryRead(Ours):
    name = OURS_TOUCH
    note = (
        "reference: touch_interval=timedelta(0), an UPDATE (own transaction) on every read; "
        "the first 2,000 reads of the order only, it is slow"
    )
    model = BenchSessionTouched
    max_reads = 2_000
    touch_interval = timedelta(0)


SELECT_SQL = (
    "SELECT session_id, data, created_at, expires_at, last_accessed "
    "FROM bench_sessions WHERE session_id = $1"
)


class AsyncpgSelect(StoreContender):
    name = PG_SELECT
    note = (
        "anchor: acquire + fetchrow by key + release (asyncpg's reset query), no touch, "
        "data left as JSON text; its own 1,000 rows of ours' table"
    )

    async def setup(self, count: int) -> None:
        db = DatabaseManager(PG_URL, pool_size=1, max_overflow=0)
        try:
            store = SessionStore(db, BenchSession, idle_timeout=LIFETIME)
            for index in range(count):
                self.ids.append(session_key((await store.create(_data(index))).id))
        finally:
            await db.close()
        self.pool = await asyncpg.create_pool(
            asyncpg_dsn(),
            min_size=POOL_SIZE,
            max_size=POOL_SIZE,
            init=asyncpg_pin_init(self.placement),
        )

    async def close(self) -> None:
        await self.pool.close()

    async def read(self, session_id: Any) -> Any:
        async with self.pool.acquire() as conn:
            return await conn.fetchrow(SELECT_SQL, session_id)

    def user_of(self, value: Any) -> Any:
        return None if value is None else json.loads(value["data"]).get("user")


STORE_CONTENDERS: list[type[StoreContender]] = [
    Starsessions,
    AsyncpgSelect,
    Ours,
    OursTouchEveryRead,
]


def _share(updates: int, hot: int) -> str:
    return f"{hot / updates:.1%}" if updates else "n/a"


async def _store_level(
    placement: Placement,
    order: list[int],
    count: int,
    tasks: int | None,
    rounds: int,
    slices: int,
    warmup: int,
) -> list[Measurement]:
    pin_self(placement)
    redis = Redis.from_url(REDIS_URL)
    redis_pid = await _redis_pid(redis)
    redis_affinity = os.sched_getaffinity(redis_pid)
    pin_backend(redis_pid, placement)
    contenders = [cls(placement) for cls in STORE_CONTENDERS]
    seq_case = f"sequential, {placement.name}"
    conc_case = f"{tasks} tasks, {placement.name}"
    try:
        for c in contenders:
            await c.setup(count)
            if c.user_of(await c.read(c.ids[0])) != "visitor 0":
                raise SystemExit(f"{c.name} did not read session 0 as it was created")
        jobs = []
        for c in contenders:
            args = [c.ids[index] for index in order[: c.max_reads]]
            jobs.append(Job(Measurement(seq_case, c.name, "reads/s", note=c.note), c.read, args))
            if tasks:
                measurement = Measurement(conc_case, c.name, "reads/s", note=c.note)
                jobs.append(Job(measurement, c.read, args, tasks))
        for c in contenders:
            await run_sequentially(c.read, c.ids[:warmup])
            if tasks:
                await run_concurrently(c.read, c.ids[:warmup], tasks)
        ours = [c for c in contenders if isinstance(c, Ours)]
        before = {c.name: await c.update_counts() for c in ours}
        await interleave(jobs, rounds, slices, f"{placement.name}: ")
        after = {c.name: await c.update_counts() for c in ours}
    finally:
        for c in contenders:
            await c.close()
        await redis.aclose()
        with contextlib.suppress(OSError):
            os.sched_setaffinity(redis_pid, redis_affinity)
        unpin_self()
    measurements = [job.measurement for job in jobs]
    for c in ours:
        updates = after[c.name][0] - before[c.name][0]
        hot = after[c.name][1] - before[c.name][1]
        for m in measurements:
            if m.contender == c.name:
                m.extra.update({"updates_during_rounds": updates, "hot_updates": hot})
                if c.name == OURS_TOUCH:
                    m.note += (
                        f"; HOT updates: {_share(updates, hot)} of its {updates:,} updates "
                        f"in {placement.name} (sequential and {tasks} tasks together)"
                    )
                else:
                    m.note += f"; {updates:,} touches written during the rounds"
    return measurements


async def store_level(
    rounds: int,
    count: int = 1_000,
    reads: int = 20_000,
    tasks: int | None = 50,
    slices: int = 5,
    warmup: int = 300,
    placement_names: tuple[str, ...] = ("split", "shared"),
) -> tuple[list[Measurement], list[Goal], dict[str, Any]]:
    db = DatabaseManager(PG_URL, pool_size=1, max_overflow=0)
    try:
        await db.create_all(SessionBenchBase.metadata)
    finally:
        await db.close()
    rng = random.Random(42)
    order = [index % count for index in range(reads)]
    rng.shuffle(order)
    all_placements = placements()
    results: list[Measurement] = []
    goals: list[Goal] = []
    for name in placement_names:
        placement = all_placements[name]
        print(f"placement {placement.name}: {placement.description}")
        results += await _store_level(placement, order, count, tasks, rounds, slices, warmup)
        for case in (f"sequential, {name}", f"{tasks} tasks, {name}" if tasks else None):
            if case:
                goals.append(
                    Goal(
                        f"sessions store ({case}): ours / starsessions",
                        case,
                        OURS,
                        STARSESSIONS,
                        1.5,
                    )
                )
    params = {
        "live_sessions_per_store": count,
        "reads": reads,
        "order": f"each session {reads // count} times, shuffled by random.Random(42)",
        "concurrent_tasks": tasks,
        "pool_size": POOL_SIZE,
        "rounds": rounds,
        "slices_per_round": slices,
        "warmup_reads": warmup,
        "placements": {name: all_placements[name].description for name in placement_names},
        "redis_pinned_like_backends": True,
    }
    return results, goals, params


# -- (b) HTTP -------------------------------------------------------------------------------


class FridgeApp(App):
    def check_answers(self) -> None:
        """A new visitor sees an empty fridge."""
        response = httpx.get(f"{self.url}/fridge", timeout=2.0)
        if response.status_code != 200 or response.json() != {"user": None, "ingredients": []}:
            raise SystemExit(
                f"{self.name}: GET /fridge gave {response.status_code} {response.text}"
            )


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    """Keep no cookie: every request of the set-up is a new visitor."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False


def _cookie_value(response: httpx.Response) -> str:
    cookie: SimpleCookie = SimpleCookie()
    for header in response.headers.get_list("set-cookie"):
        cookie.load(header)
    if "session" not in cookie or not cookie["session"].value:
        raise SystemExit(f"no session cookie in {response.headers.get_list('set-cookie')}")
    return cookie["session"].value


async def _create_sessions(url: str, count: int, workers: int = 8) -> list[str]:
    """``count`` visitors, each putting 3 ingredients in the fridge; their cookies."""
    cookies: list[str | None] = [None] * count
    indexes = iter(range(count))
    jar = http.cookiejar.CookieJar(policy=_NoCookies())
    async with httpx.AsyncClient(base_url=url, cookies=jar, timeout=30.0) as client:

        async def worker() -> None:
            for index in indexes:
                response = await client.post(
                    "/fridge/ingredients", json={"ingredient_ids": _fridge_of(index)}
                )
                if response.status_code != 200 or len(response.json()["ingredients"]) != 3:
                    raise SystemExit(f"{url}: POST /fridge/ingredients gave {response.text}")
                cookies[index] = _cookie_value(response)

        await asyncio.gather(*(worker() for _ in range(workers)))
    return [cookie for cookie in cookies if cookie is not None]


async def _fridges(url: str, cookies: Sequence[str], workers: int = 8) -> list[dict[str, Any]]:
    """``GET /fridge`` for each cookie (in order)."""
    out: list[dict[str, Any]] = [{}] * len(cookies)
    indexes = iter(range(len(cookies)))
    jar = http.cookiejar.CookieJar(policy=_NoCookies())
    async with httpx.AsyncClient(base_url=url, cookies=jar, timeout=30.0) as client:

        async def worker() -> None:
            for index in indexes:
                response = await client.get(
                    "/fridge", headers={"cookie": f"session={cookies[index]}"}
                )
                if response.status_code != 200:
                    raise SystemExit(f"{url}: GET /fridge gave {response.status_code}")
                out[index] = response.json()

        await asyncio.gather(*(worker() for _ in range(workers)))
    return out


def _check_fridges(name: str, fridges: Sequence[dict[str, Any]]) -> None:
    """Every session still shows its 3 ingredients."""
    for index, fridge in enumerate(fridges):
        ids = [entry["ingredient_id"] for entry in fridge.get("ingredients", [])]
        if ids != _fridge_of(index):
            raise SystemExit(f"{name}: session {index} shows {fridge}, not {_fridge_of(index)}")


def _shape(fridge: dict[str, Any]) -> Any:
    return (
        fridge["user"],
        [(sorted(e), e["ingredient_id"], e["name"], e["category"]) for e in fridge["ingredients"]],
    )


def _write_lua(cookies: Sequence[str], path: Path, url_path: str = "/fridge") -> None:
    """A wrk script: ``GET url_path`` with one of ``cookies`` per request."""
    lines = [
        f"-- wrk script: GET {url_path} with one session cookie per request, cycling through",
        "-- the sessions in a fixed scrambled order (written by bench/sessions.py).",
        "local cookies = {",
        *(f'  "session={cookie}",' for cookie in cookies),
        "}",
        "local n = 0",
        "",
        "request = function()",
        "  n = n + 1",
        "  local cookie = cookies[(n * 7919) % #cookies + 1]",
        f'  return wrk.format("GET", "{url_path}", {{["Cookie"] = cookie}})',
        "end",
        "",
    ]
    path.write_text("\n".join(lines))


def _load(app: App, lua: Path, seconds: int, cpus: set[int] | None) -> LoadResult:
    result = run_wrk(app.url, seconds, cpus, script=lua)
    if result.errors:
        raise SystemExit(f"{app.name}: {result.errors} failed requests")
    return result


def _round_extra(result: LoadResult) -> dict[str, Any]:
    return {
        "requests": result.requests,
        "requests_per_s": result.requests_per_s,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
    }


def _pin_redis(cpus: set[int] | None) -> tuple[int, set[int]] | None:
    async def pid() -> int:
        redis = Redis.from_url(REDIS_URL)
        try:
            return await _redis_pid(redis)
        finally:
            await redis.aclose()

    if cpus is None:
        return None
    redis_pid = asyncio.run(pid())
    affinity = os.sched_getaffinity(redis_pid)
    try:
        os.sched_setaffinity(redis_pid, cpus)
    except OSError:
        return None
    return redis_pid, affinity


def http_level(
    apps: Mapping[str, App],
    lua: Mapping[str, Path],
    rounds: int,
    seconds: int,
    warmup: int,
    load_cpus: set[int] | None,
    case: str = HTTP_CASE,
) -> list[Measurement]:
    """Each app under wrk with its script: a warm-up, then ``rounds`` rotated rounds; req/s
    per round, the median p50 and p99 in ``extra`` and the note (also used by
    :mod:`bench.litestar`)."""
    measurements = {
        name: Measurement(case, name, "req/s", note=app.target) for name, app in apps.items()
    }
    for name, app in apps.items():
        warm = _load(app, lua[name], warmup, load_cpus)
        print(f"  warm-up {name}: {warm.requests_per_s:,.0f} req/s")
    asyncio.run(_pin_backends(load_cpus))
    order = list(apps)
    for round_no in range(rounds):
        shift = round_no % len(order)
        for name in order[shift:] + order[:shift]:
            result = _load(apps[name], lua[name], seconds, load_cpus)
            measurements[name].rates.append(result.requests_per_s)
            measurements[name].extra.setdefault("rounds", []).append(_round_extra(result))
        print(f"  http round {round_no + 1}/{rounds} done")
    for m in measurements.values():
        rounds_ = m.extra["rounds"]
        p50 = [r["p50_ms"] for r in rounds_ if r["p50_ms"] is not None]
        p99 = [r["p99_ms"] for r in rounds_ if r["p99_ms"] is not None]
        m.extra["p50_ms"] = statistics.median(p50) if p50 else None
        m.extra["p99_ms"] = statistics.median(p99) if p99 else None
        if p50 and p99:
            m.note = f"{m.note}; p50 {m.extra['p50_ms']:.2f} ms, p99 {m.extra['p99_ms']:.2f} ms"
    return list(measurements.values())


# -- (c) cleanup under load -------------------------------------------------------------------


async def _add_expired(count: int, children_per_session: int) -> dict[str, Any]:
    """``count`` expired sessions with ``children_per_session`` fridge rows each, made by
    the server; then VACUUM ANALYZE and a checkpoint, as on a settled table."""
    now = datetime.now(UTC)
    conn = await asyncpg.connect(asyncpg_dsn())
    try:
        t0 = time.perf_counter()
        await conn.execute(
            "INSERT INTO user_fridge_sessions "
            "(session_id, data, created_at, expires_at, last_accessed) "
            "SELECT encode(sha256(convert_to('expired ' || g, 'UTF8')), 'hex'), "
            "'{}'::json, $1, $2, $3 FROM generate_series(1, $4) AS g",
            now - timedelta(days=3),
            now - timedelta(days=1),
            now - timedelta(days=2),
            count,
        )
        await conn.execute(
            "INSERT INTO user_fridge_ingredients (session_id, ingredient_id, added_at) "
            "SELECT encode(sha256(convert_to('expired ' || g, 'UTF8')), 'hex'), i, $1 "
            "FROM generate_series(1, $2) AS g CROSS JOIN generate_series(1, $3) AS i",
            now - timedelta(days=2),
            count,
            children_per_session,
        )
        loaded = time.perf_counter() - t0
        await conn.execute("VACUUM ANALYZE user_fridge_sessions, user_fridge_ingredients")
        await conn.execute("CHECKPOINT")
        sizes = await conn.fetchrow(
            "SELECT pg_total_relation_size('user_fridge_sessions') AS sessions, "
            "pg_total_relation_size('user_fridge_ingredients') AS children"
        )
        return {
            "load_seconds": round(loaded, 1),
            "settle_seconds": round(time.perf_counter() - t0 - loaded, 1),
            "sessions_table_bytes": int(sizes["sessions"]),
            "children_table_bytes": int(sizes["children"]),
        }
    finally:
        await conn.close()


async def _counts() -> tuple[int, int, int]:
    """(live sessions, expired sessions, fridge rows) of ours' tables."""
    conn = await asyncpg.connect(asyncpg_dsn())
    try:
        row = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE expires_at > now()) AS live, "
            "count(*) FILTER (WHERE expires_at <= now()) AS expired, "
            "(SELECT count(*) FROM user_fridge_ingredients) AS children "
            "FROM user_fridge_sessions"
        )
        return int(row["live"]), int(row["expired"]), int(row["children"])
    finally:
        await conn.close()


class _Cleanup(threading.Thread):
    """``POST /admin/cleanup-sessions`` on the app, timed."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.deleted: int | None = None
        self.seconds: float | None = None
        self.error: str | None = None

    def run(self) -> None:
        t0 = time.perf_counter()
        try:
            auth = {"Authorization": f"Bearer {FRIDGE_ADMIN_TOKEN}"}
            response = httpx.post(f"{self.url}/admin/cleanup-sessions", headers=auth)
            job = response.json().get("job") if response.status_code == 202 else None
            while job is not None and job["status"] == "running":
                time.sleep(0.05)  # the sweep runs in the app's background; poll its job
                job = httpx.get(f"{self.url}{job['status_url']}", headers=auth).json()
            if job is None or job["status"] != "done":
                self.error = f"{response.status_code} {response.text} {job}"
            else:
                self.deleted = int(job["deleted"])
        except httpx.HTTPError as exc:
            self.error = repr(exc)
        self.seconds = time.perf_counter() - t0


def cleanup_under_load(
    app: FridgeApp,
    lua: Path,
    cookies: Sequence[str],
    expired: int,
    runs: int,
    seconds: int,
    load_cpus: set[int] | None,
    max_runs: int = 60,
) -> tuple[list[Measurement], dict[str, Any]]:
    children_per_session = 2
    print(f"  adding {expired:,} expired sessions with {children_per_session} fridge rows each")
    info = asyncio.run(_add_expired(expired, children_per_session))
    live, waiting, children = asyncio.run(_counts())
    print(
        f"  loaded in {info['load_seconds']}s (+{info['settle_seconds']}s VACUUM ANALYZE, "
        f"CHECKPOINT): {live:,} live, {waiting:,} expired sessions, {children:,} fridge rows"
    )
    without = Measurement(P99_CASE, WITHOUT_CLEANUP, "ms p99", note="the load alone")
    during = Measurement(P99_CASE, DURING_CLEANUP, "ms p99")
    after = Measurement(P99_CASE, AFTER_CLEANUP, "ms p99")
    _load(app, lua, 3, load_cpus)  # warm the caches the load had before the insert
    for _ in range(runs):
        result = _load(app, lua, seconds, load_cpus)
        if result.p99_ms is not None:
            without.rates.append(result.p99_ms)
        without.extra.setdefault("rounds", []).append(_round_extra(result))
    print(f"  without cleanup: p99 {without.rates}")
    cleanup = _Cleanup(app.url)
    cleanup.start()
    time.sleep(0.5)
    asyncio.run(_pin_backends(load_cpus))  # the background pool's connection opened just now
    partial = []
    done = 0
    while cleanup.is_alive() and done < max_runs:
        result = _load(app, lua, seconds, load_cpus)
        done += 1
        if cleanup.is_alive():
            if result.p99_ms is not None:
                during.rates.append(result.p99_ms)
            during.extra.setdefault("rounds", []).append(_round_extra(result))
        else:
            partial.append(_round_extra(result))
    cleanup.join()
    if cleanup.error is not None or cleanup.deleted is None or cleanup.seconds is None:
        raise SystemExit(f"cleanup failed: {cleanup.error}")
    print(f"  during cleanup: p99 {during.rates} ({len(partial)} run(s) outlasted the cleanup)")
    if partial:
        during.extra["runs_that_outlasted_the_cleanup"] = partial
    live_after, waiting_after, children_after = asyncio.run(_counts())
    _check_fridges(OURS_APP, asyncio.run(_fridges(app.url, cookies)))
    result = _load(app, lua, seconds, load_cpus)
    if result.p99_ms is not None:
        after.rates.append(result.p99_ms)
    after.extra["rounds"] = [_round_extra(result)]
    after.note = "reference: the same load once the cleanup is done (dead rows, no autovacuum)"
    children_deleted = children - children_after
    sessions_rate = cleanup.deleted / cleanup.seconds
    children_rate = children_deleted / cleanup.seconds
    during_rps = [r["requests_per_s"] for r in during.extra.get("rounds", [])]
    without_rps = [r["requests_per_s"] for r in without.extra["rounds"]]
    without.note += f"; {statistics.median(without_rps):,.0f} req/s"
    if during_rps:
        during.note = (
            f"cleanup in the app (POST /admin/cleanup-sessions, batch_size=1000); "
            f"{statistics.median(during_rps):,.0f} req/s"
        )
    rates = [
        Measurement(
            CLEANUP_CASE,
            "sessions deleted",
            "rows/s",
            [sessions_rate],
            note=f"{cleanup.deleted:,} sessions in {cleanup.seconds:.1f} s",
        ),
        Measurement(
            CLEANUP_CASE,
            "fridge rows deleted (ON DELETE CASCADE)",
            "rows/s",
            [children_rate],
            note=f"{children_deleted:,} rows in {cleanup.seconds:.1f} s",
        ),
    ]
    info.update(
        {
            "expired_sessions": expired,
            "fridge_rows_per_expired_session": children_per_session,
            "sessions_deleted": cleanup.deleted,
            "fridge_rows_deleted": children_deleted,
            "cleanup_seconds": round(cleanup.seconds, 2),
            "live_sessions_before_and_after": [live, live_after],
            "expired_left_after": waiting_after,
            "batch_size": 1000,
        }
    )
    if cleanup.deleted != waiting:
        print(f"  (cleanup deleted {cleanup.deleted:,} of {waiting:,} expired sessions)")
    return [without, during, after, *rates], info


# -- the scenario -------------------------------------------------------------------------


def _source_state() -> str:
    """The commit measured, and whether ``src/`` or ``examples/`` differ from it."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return out.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "src", "examples")
    return f"{commit} (src/ or examples/ modified)" if dirty else commit


def run(
    runner: Callable[[Coroutine[Any, Any, Any]], Any] = asyncio.run,
    rounds: int | None = None,
    seconds: int = 10,
    warmup: int = 3,
    expired: int = 1_000_000,
    http_sessions: int = 1_000,
    cleanup_seconds: int = 5,
    cleanup_runs: int = 4,
) -> None:
    asyncio.run(recreate_database(seed_rows=0))
    asyncio.run(fill_server_version())

    async def clear_redis() -> str:
        redis = Redis.from_url(REDIS_URL)
        try:
            await _clear_redis(redis)
            return str((await redis.info("server"))["redis_version"])
        finally:
            await redis.aclose()

    redis_version = asyncio.run(clear_redis())
    source = _source_state()
    print(f"measuring {source}")

    t0 = time.perf_counter()
    store_results, goals, store_params = runner(store_level(rounds or 3))
    print(f"[store level took {time.perf_counter() - t0:.0f}s]")

    from shutil import which

    if which("wrk") is None:
        raise SystemExit("the sessions scenario needs wrk (apt-get install wrk)")
    t0 = time.perf_counter()
    app_cpus, load_cpus = _cpus()
    apps = {name: FridgeApp(name, target, app_cpus) for name, target in APPS.items()}
    redis_affinity = None
    try:
        for app in apps.values():
            app.wait_ready()
        cookies = {
            name: asyncio.run(_create_sessions(app.url, http_sessions))
            for name, app in apps.items()
        }
        fridges = {name: asyncio.run(_fridges(apps[name].url, cookies[name])) for name in apps}
        for name, found in fridges.items():
            _check_fridges(name, found)
        if _shape(fridges[OURS_APP][0]) != _shape(fridges[STARS_APP][0]):
            raise SystemExit(
                f"the apps answer differently: {fridges[OURS_APP][0]} vs {fridges[STARS_APP][0]}"
            )
        redis_affinity = _pin_redis(load_cpus)
        with tempfile.TemporaryDirectory(prefix="bench-sessions-") as tmp:
            lua = {}
            for index, name in enumerate(apps):
                lua[name] = Path(tmp) / f"fridge{index}.lua"
                _write_lua(cookies[name], lua[name])
            http_results = http_level(apps, lua, rounds or 2, seconds, warmup, load_cpus)
            for name, app in apps.items():
                _check_fridges(name, asyncio.run(_fridges(app.url, cookies[name])))
            print(f"[http took {time.perf_counter() - t0:.0f}s]")
            t0 = time.perf_counter()
            apps[STARS_APP].stop()
            cleanup_results, cleanup_info = cleanup_under_load(
                apps[OURS_APP],
                lua[OURS_APP],
                cookies[OURS_APP],
                expired,
                cleanup_runs,
                cleanup_seconds,
                load_cpus,
            )
            print(f"[cleanup under load took {time.perf_counter() - t0:.0f}s]")
    finally:
        for app in apps.values():
            app.stop()
        if redis_affinity is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(*redis_affinity)
        asyncio.run(clear_redis())

    results = [*store_results, *http_results, *cleanup_results]
    goals += [
        Goal(
            "sessions http GET /fridge: ours / starsessions (req/s)",
            HTTP_CASE,
            OURS_APP,
            STARS_APP,
            1.2,
        ),
        Goal(
            "sessions cleanup: p99 during / without cleanup",
            P99_CASE,
            DURING_CLEANUP,
            WITHOUT_CLEANUP,
            2.0,
            "<=",
        ),
    ]
    baselines = {m.case: STARSESSIONS for m in store_results}
    baselines[HTTP_CASE] = STARS_APP
    baselines[P99_CASE] = WITHOUT_CLEANUP
    evaluated = evaluate_goals(results, goals)
    print_table("sessions (a): store level, read + sliding touch", store_results, baselines)
    print_table(
        f"sessions (b): HTTP, {CONNECTIONS} connections, {seconds}s per run, "
        f"median of {rounds or 2} rounds",
        http_results,
        baselines,
    )
    print_table(
        f"sessions (c): cleanup of {expired:,} expired sessions under the GET /fridge load",
        cleanup_results,
        baselines,
    )
    print_goals(evaluated)
    write_results(
        "sessions",
        results,
        evaluated,
        {
            "store_level": store_params,
            "http": {
                "sessions_per_app": http_sessions,
                "ingredients_per_session": 3,
                "command": f"wrk -t1 -c{CONNECTIONS} -d{seconds}s --timeout 5s --latency "
                "-s <generated script cycling the 1,000 cookies> <url>",
                "warmup_seconds": warmup,
                "seconds": seconds,
                "rounds": rounds or 2,
                "pool_size": 10,
                "cpus": "app: one CPU of its own; wrk, Redis and PostgreSQL backends: the other"
                if app_cpus
                else "unpinned",
                "starsessions": "SessionMiddleware(RedisStore, lifetime=24h, rolling=True) + "
                "SessionAutoloadMiddleware",
            },
            "cleanup": cleanup_info,
            "redis_server": redis_version,
            "source": source,
            "source_at_end": _source_state(),
            "backends_pinned": pinning_worked(),
        },
        baselines,
    )
