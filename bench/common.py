"""Shared pieces: settings, the benchmark database, timing, tables and result files."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import asyncpg
from sqlalchemy.engine import make_url

#: Every scenario, in the order ``python -m bench all`` runs them and the report lists them.
SCENARIOS = (
    "reads",
    "lists",
    "queries",
    "bulk",
    "http",
    "sessions",
    "litestar",
    "events",
    "deploy",
    "reference",
)

DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/aegis_bench"
PG_URL = os.environ.get("BENCH_PG_URL", DEFAULT_PG_URL)

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
DOCS_DIR = ROOT / "docs"

SEED_ROWS = 10_000
#: The fridge example's admin token in the benchmark (its admin endpoints need one).
FRIDGE_ADMIN_TOKEN = "bench-admin-token"
CATEGORIES = [f"c{i}" for i in range(20)]
ITEM_COLUMNS = ("name", "category", "price", "in_stock", "created_at")
BASE_TIME = datetime(2025, 1, 1, tzinfo=UTC)


# -- database ------------------------------------------------------------------------------


def asyncpg_dsn(url: str = PG_URL, database: str | None = None) -> str:
    """The plain ``postgresql://`` DSN asyncpg takes for a SQLAlchemy URL."""
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


def database_name(url: str = PG_URL) -> str:
    name = make_url(url).database
    if not name:
        raise SystemExit("BENCH_PG_URL names no database")
    return name


def make_rows(count: int, *, offset: int = 0) -> list[dict[str, Any]]:
    """``count`` item rows as dicts, the same every time."""
    return [
        {
            "name": f"item {offset + i}",
            "category": CATEGORIES[(offset + i) % len(CATEGORIES)],
            "price": ((offset + i) * 37) % 10_000,
            "in_stock": (offset + i) % 3 != 0,
            "created_at": BASE_TIME.replace(microsecond=(offset + i) % 1_000_000),
        }
        for i in range(count)
    ]


def as_tuples(rows: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [tuple(row[column] for column in ITEM_COLUMNS) for row in rows]


async def recreate_database(seed_rows: int = SEED_ROWS) -> None:
    """Drop and recreate the benchmark database, create ``bench_items`` and seed it."""
    name = database_name()
    admin = await asyncpg.connect(asyncpg_dsn(database="postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    await seed_items(PG_URL, seed_rows)


async def seed_items(url: str, rows: int) -> None:
    """Create ``bench_items`` in the database at ``url``, COPY ``rows`` rows into it and
    ANALYZE it."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from bench.models import metadata as item_metadata

    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(item_metadata.create_all)
    finally:
        await engine.dispose()
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        if rows:
            await conn.copy_records_to_table(
                "bench_items", records=as_tuples(make_rows(rows)), columns=ITEM_COLUMNS
            )
        await conn.execute("VACUUM ANALYZE bench_items")
    finally:
        await conn.close()


async def truncate_items() -> None:
    conn = await asyncpg.connect(asyncpg_dsn())
    try:
        await conn.execute("TRUNCATE bench_items RESTART IDENTITY")
    finally:
        await conn.close()


async def count_items() -> int:
    conn = await asyncpg.connect(asyncpg_dsn())
    try:
        return int(await conn.fetchval("SELECT count(*) FROM bench_items"))
    finally:
        await conn.close()


# -- timing ---------------------------------------------------------------------------------


async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
    """Seconds ``fn()`` took."""
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start


async def run_concurrently(
    read_one: Callable[[Any], Awaitable[Any]], args: Sequence[Any], tasks: int
) -> None:
    """Call ``read_one`` on every item of ``args`` from ``tasks`` tasks sharing one queue."""
    iterator = iter(args)

    async def worker() -> None:
        for arg in iterator:
            await read_one(arg)

    await asyncio.gather(*(worker() for _ in range(tasks)))


async def run_sequentially(read_one: Callable[[Any], Awaitable[Any]], args: Sequence[Any]) -> None:
    for arg in args:
        await read_one(arg)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


@dataclass
class Job:
    """Calls of ``fn`` on each of ``args``, sequentially or from ``tasks`` tasks."""

    measurement: Measurement
    fn: Callable[[Any], Awaitable[Any]]
    args: Sequence[Any]
    tasks: int | None = None

    async def run(self, part: Sequence[Any]) -> float:
        gc.collect()
        if self.tasks is None:
            return await timed(lambda: run_sequentially(self.fn, part))
        return await timed(lambda: run_concurrently(self.fn, part, self.tasks or 1))


async def interleave(jobs: Sequence[Job], rounds: int, slices: int, label: str = "") -> None:
    """Run every job ``rounds`` times, interleaved: each round is cut into ``slices`` and
    each slice runs a slice of every job, starting from a different job each time. One
    rate per round (calls / seconds) goes into each job's measurement."""
    for round_no in range(rounds):
        spent = [0.0] * len(jobs)
        done = [0] * len(jobs)
        for slice_no in range(slices):
            shift = (round_no * slices + slice_no) % len(jobs)
            for index in [*range(shift, len(jobs)), *range(shift)]:
                job = jobs[index]
                chunk = len(job.args) // slices
                part = job.args[slice_no * chunk : (slice_no + 1) * chunk]
                spent[index] += await job.run(part)
                done[index] += len(part)
        for index, job in enumerate(jobs):
            job.measurement.rates.append(done[index] / spent[index])
        print(f"  {label}round {round_no + 1}/{rounds} done")


# -- results ---------------------------------------------------------------------------------


@dataclass
class Measurement:
    case: str
    contender: str
    unit: str
    rates: list[float] = field(default_factory=list)
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float | None:
        return median(self.rates) if self.rates else None


@dataclass
class Goal:
    """``ratio(case, ours, peer) >= threshold``; with ``comparison="<="`` the ratio must
    stay at or under the threshold instead (for costs such as latencies)."""

    name: str
    case: str
    ours: str
    peer: str
    threshold: float
    comparison: Literal[">=", "<="] = ">="


def ratio(measurements: Sequence[Measurement], case: str, a: str, b: str) -> float | None:
    by_name = {(m.case, m.contender): m for m in measurements}
    ma, mb = by_name.get((case, a)), by_name.get((case, b))
    if ma is None or mb is None or ma.rate is None or mb.rate is None or not mb.rate:
        return None
    return ma.rate / mb.rate


def evaluate_goals(
    measurements: Sequence[Measurement], goals: Sequence[Goal]
) -> list[dict[str, Any]]:
    out = []
    for goal in goals:
        value = ratio(measurements, goal.case, goal.ours, goal.peer)
        if value is None:
            met = None
        elif goal.comparison == "<=":
            met = value <= goal.threshold
        else:
            met = value >= goal.threshold
        out.append(
            {
                "goal": goal.name,
                "case": goal.case,
                "ours": goal.ours,
                "peer": goal.peer,
                "threshold": goal.threshold,
                "comparison": goal.comparison,
                "ratio": value,
                "met": met,
            }
        )
    return out


def format_rate(value: float | None) -> str:
    if value is None:
        return "n/a"
    # Rates are in the thousands; small figures (milliseconds of latency) keep a decimal.
    return f"{value:,.1f}" if abs(value) < 100 else f"{value:,.0f}"


def print_table(
    title: str,
    measurements: Sequence[Measurement],
    baselines: dict[str, str],
) -> None:
    """One block per case: contender, rate and ratio to that case's baseline."""
    print(f"\n== {title} ==")
    cases = list(dict.fromkeys(m.case for m in measurements))
    for case in cases:
        rows = [m for m in measurements if m.case == case]
        baseline = baselines.get(case)
        base = next((m.rate for m in rows if m.contender == baseline), None)
        print(f"\n  {case}" + (f"  (ratio vs {baseline})" if baseline else ""))
        width = max(len(m.contender) for m in rows)
        for m in rows:
            rel = f"{m.rate / base:6.2f}x" if m.rate and base else "    n/a"
            spread = (
                f"  [{format_rate(min(m.rates))} .. {format_rate(max(m.rates))}]"
                if len(m.rates) > 1
                else ""
            )
            note = f"  ({m.note})" if m.note else ""
            print(
                f"    {m.contender:<{width}}  {format_rate(m.rate):>10} {m.unit:<8} {rel}"
                f"{spread}{note}"
            )


def print_goals(goals: Sequence[dict[str, Any]]) -> None:
    print("\n  goals")
    for g in goals:
        value = "n/a" if g["ratio"] is None else f"{g['ratio']:.2f}x"
        met = {True: "met", False: "MISSED", None: "not measured"}[g["met"]]
        comparison = g.get("comparison", ">=")
        print(f"    {g['goal']:<48} {value:>8}  (goal {comparison} {g['threshold']}x)  {met}")


def write_results(
    scenario: str,
    measurements: Sequence[Measurement],
    goals: Sequence[dict[str, Any]],
    params: dict[str, Any],
    baselines: dict[str, str],
) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{scenario}.json"
    payload = {
        "scenario": scenario,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "params": params,
        # Other load on the machine skews everything: the 1, 5 and 15 minute load averages
        # when the scenario ended.
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "baselines": baselines,
        "environment": environment(),
        "results": [
            {
                "case": m.case,
                "contender": m.contender,
                "unit": m.unit,
                "rate": m.rate,
                "rounds": m.rates,
                "note": m.note,
                **({"extra": m.extra} if m.extra else {}),
            }
            for m in measurements
        ],
        "goals": list(goals),
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\n  results written to {path.relative_to(ROOT)}")
    return path


def load_results() -> dict[str, dict[str, Any]]:
    found = {}
    for scenario in SCENARIOS:
        path = RESULTS_DIR / f"{scenario}.json"
        if path.exists():
            found[scenario] = json.loads(path.read_text())
    return found


# -- environment ------------------------------------------------------------------------------

_environment: dict[str, Any] | None = None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                kib = int(line.split()[1])
                return f"{kib / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def _wrk_version() -> str | None:
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    out = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
    first = (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else ""
    return first.split(" Copyright")[0].strip() or "unknown"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """Machine and versions (no host names, no paths)."""
    global _environment
    if _environment is None:
        _environment = {
            "machine": {
                "cpus": os.cpu_count(),
                "cpu_model": _cpu_model(),
                "memory": _memory(),
                "os": _os_name(),
                "kernel": platform.release(),
            },
            "versions": {
                "python": platform.python_version(),
                "postgresql": None,
                **{
                    dist: _version(dist)
                    for dist in (
                        "aegis-shared",
                        "sqlalchemy",
                        "asyncpg",
                        "advanced-alchemy",
                        "sqlmodel",
                        "fastapi",
                        "starlette",
                        "litestar",
                        "uvicorn",
                        "uvloop",
                        "httptools",
                        "pyinstrument",
                        "matplotlib",
                        "starsessions",
                        "redis",
                        "hiredis",
                    )
                },
                "wrk": _wrk_version(),
            },
        }
    return _environment


async def fill_server_version() -> None:
    """Record the PostgreSQL server version in :func:`environment` (call inside the loop)."""
    env = environment()
    conn = await asyncpg.connect(asyncpg_dsn(database="postgres"))
    try:
        env["versions"]["postgresql"] = str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


# -- CPU placement ----------------------------------------------------------------------------
#
# On a small VM a loopback round trip costs ~25 µs when the client and its PostgreSQL backend
# share a CPU, and ~150-200 µs when the backend sleeps on the other CPU (the wake-up crosses
# the hypervisor). Left to the scheduler, a run flips between the two at random, so every
# scenario pins itself and the backends of the connections it opens.


@dataclass(frozen=True)
class Placement:
    name: str
    client: frozenset[int] | None
    backends: frozenset[int] | None
    description: str


def placements() -> dict[str, Placement]:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2:
        none = Placement("unpinned", None, None, "fewer than 2 CPUs: nothing pinned")
        return {"split": none, "shared": none, "unpinned": none}
    first, second = frozenset({cpus[0]}), frozenset({cpus[1]})
    return {
        "split": Placement(
            "split",
            first,
            second,
            "client on one CPU, its PostgreSQL backends on another: every round trip pays a "
            "cross-CPU wake-up, as a database on its own host pays the network",
        ),
        "shared": Placement(
            "shared",
            first,
            first,
            "client and its PostgreSQL backends on the same CPU: round trips are nearly free, "
            "so this measures the client's CPU cost per operation",
        ),
        "unpinned": Placement("unpinned", None, None, "nothing pinned"),
    }


_pin_failures: list[str] = []


def pin_self(placement: Placement) -> None:
    if placement.client is not None:
        os.sched_setaffinity(0, placement.client)


def unpin_self() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, range(os.cpu_count() or 1))


def pin_backend(pid: int, placement: Placement) -> None:
    """Pin the PostgreSQL backend ``pid`` (best effort: needs the right to)."""
    if placement.backends is None:
        return
    try:
        os.sched_setaffinity(pid, placement.backends)
    except OSError as exc:
        if not _pin_failures:
            print(f"  (cannot pin PostgreSQL backends: {exc}; results will be noisier)")
        _pin_failures.append(str(exc))


def pinning_worked() -> bool:
    return not _pin_failures


def pin_engine(engine: Any, placement: Placement) -> None:
    """Pin the backend of every connection ``engine`` (an ``AsyncEngine``) opens."""
    if placement.backends is None:
        return
    from sqlalchemy import event

    def _pin(dbapi_connection: Any, record: Any) -> None:
        pin_backend(dbapi_connection.driver_connection.get_server_pid(), placement)

    event.listen(engine.sync_engine, "connect", _pin)


def asyncpg_pin_init(placement: Placement) -> Callable[[Any], Awaitable[None]]:
    async def init(conn: Any) -> None:
        pin_backend(conn.get_server_pid(), placement)

    return init


class PeerEngines:
    """The connections the sequential read scenarios (``lists``, ``queries``) give their
    contenders on one placement, each with a pool of ``pool_size`` and its backends pinned:
    an asyncpg pool (the reference), a plain SQLAlchemy engine and sessionmaker (the ORM),
    another for Advanced Alchemy, and our ``DatabaseManager``."""

    def __init__(self, placement: Placement, pool_size: int = 10) -> None:
        self.placement = placement
        self.pool_size = pool_size

    async def setup(self) -> None:
        from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

        from aegis_shared.database import DatabaseManager

        size = self.pool_size
        self.pool = await asyncpg.create_pool(
            asyncpg_dsn(), min_size=size, max_size=size, init=asyncpg_pin_init(self.placement)
        )
        self.engine = create_async_engine(PG_URL, pool_size=size, max_overflow=0)
        pin_engine(self.engine, self.placement)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self.aa_engine = create_async_engine(PG_URL, pool_size=size, max_overflow=0)
        pin_engine(self.aa_engine, self.placement)
        self.aa_sessions = async_sessionmaker(self.aa_engine, expire_on_commit=False)
        self.db = DatabaseManager(PG_URL, pool_size=size, max_overflow=0)
        pin_engine(self.db.engine, self.placement)

    async def close(self) -> None:
        await self.pool.close()
        await self.engine.dispose()
        await self.aa_engine.dispose()
        await self.db.close()
