"""``deploy``: ``GET /items/{id}`` (a read-only unit of work) under uvicorn with 1 and 2
worker processes, on the server directly and through pgbouncer in transaction mode, with
and without a streaming replica taking the reads.

The primary and its standby are the suite's own (tests/replication.py: initdb and
pg_basebackup -R on free ports, fsync off) and pgbouncer is Debian's 1.18 with the suite's
generated config (tests/pgbouncer.py; ``default_pool_size`` 20 here), so the bench needs
PostgreSQL's server binaries and pgbouncer installed, as the suite does. Each case: 3 s of
warm-up, then ``wrk -t1 -c32`` for ``seconds``; nothing is pinned (two workers need both
CPUs), so wrk, the workers, pgbouncer and both servers share this machine's 2 CPUs: the
figures say what the topology costs here, not what it gains on more cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
from sqlalchemy.engine import URL

from bench.common import (
    ROOT,
    Measurement,
    asyncpg_dsn,
    print_table,
    seed_items,
    write_results,
)
from bench.http import run_httpx, run_wrk
from tests import pgbouncer, replication
from tests.ports import free_port

ROWS = 10_000
CASES = [
    # (name, workers, through pgbouncer, with a replica)
    ("direct, 1 worker", 1, False, False),
    ("direct, 2 workers", 2, False, False),
    ("pgbouncer, 1 worker", 1, True, False),
    ("pgbouncer, 2 workers", 2, True, False),
    ("direct + replica, 2 workers", 2, False, True),
    ("pgbouncer + replica, 2 workers", 2, True, True),
]


async def _seed(primary: URL, standby: URL) -> None:
    """The items on the primary, once the standby has replayed them."""
    await seed_items(primary.render_as_string(hide_password=False), ROWS)
    conn = await asyncpg.connect(_dsn(primary))
    try:
        written = await conn.fetchval("SELECT pg_current_wal_lsn()")
    finally:
        await conn.close()
    replica = await asyncpg.connect(_dsn(standby))
    try:
        while await replica.fetchval("SELECT pg_last_wal_replay_lsn()") < written:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    finally:
        await replica.close()


def _dsn(url: URL) -> str:
    return asyncpg_dsn(url.render_as_string(hide_password=False))


@contextlib.contextmanager
def _workers(count: int, env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "bench.apps.deploy_app:app"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(count)]
    command += ["--log-level", "warning", "--no-access-log"]
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: F401

        command += ["--loop", "uvloop"]
    with contextlib.suppress(ImportError):
        import httptools  # noqa: F401

        command += ["--http", "httptools"]
    process = subprocess.Popen(
        command, cwd=ROOT, env={**os.environ, **env, "PYTHONPATH": str(ROOT)}
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise SystemExit(f"the deploy app exited with {process.returncode} at start")
            with contextlib.suppress(httpx.TransportError):
                response = httpx.get(f"{url}/items/1", timeout=2)
                if response.status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("the deploy app did not answer within 30 s")
            time.sleep(0.2)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _environment(primary: URL, bouncer: URL | None, standby: URL | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_")}
    env["DATABASE_URL"] = (bouncer or primary).render_as_string(hide_password=False)
    if bouncer is not None:
        env["DATABASE_PGBOUNCER"] = "true"
        env["DATABASE_DIRECT_URL"] = primary.render_as_string(hide_password=False)
    if standby is not None:
        env["DATABASE_REPLICA_URLS"] = standby.render_as_string(hide_password=False)
    return env


def run(rounds: int = 1, seconds: int = 10, warmup: int = 3) -> None:
    """Every case in turn; prints the table and writes bench/results/deploy.json."""
    if pgbouncer.binary() is None or replication.bindir() is None:
        raise SystemExit(
            "bench deploy needs pgbouncer and PostgreSQL's server binaries: "
            f"{pgbouncer.INSTALL_HINT}; {replication.INSTALL_HINT}"
        )
    load = run_wrk if shutil.which("wrk") else run_httpx
    measurements: list[Measurement] = []
    with replication.primary_and_standby() as pair:
        primary = pair.primary
        asyncio.run(_seed(primary, pair.standby))
        with pgbouncer.running(primary, pool_size=20) as bouncer:
            for name, workers, through, replica in CASES:
                env = _environment(
                    primary, bouncer if through else None, pair.standby if replica else None
                )
                measurement = Measurement("GET /items/{id}", name, "req/s")
                p99: list[float] = []
                with _workers(workers, env) as url:
                    load(url, warmup, None)
                    for _ in range(rounds):
                        result = load(url, seconds, None)
                        if result.errors:
                            raise SystemExit(f"{name}: {result.errors} failed requests")
                        measurement.rates.append(result.requests_per_s)
                        if result.p99_ms is not None:
                            p99.append(result.p99_ms)
                if p99:
                    measurement.extra["p99_ms"] = statistics.median(p99)
                    measurement.note = f"p99 {statistics.median(p99):.1f} ms"
                measurements.append(measurement)
                print(f"  {name}: {measurement.rate:,.0f} req/s ({measurement.note})", flush=True)
    baselines = {"GET /items/{id}": CASES[0][0]}
    print_table(
        "deploy: 1 and 2 workers, direct and through pgbouncer, with a replica",
        measurements,
        baselines,
    )
    params: dict[str, Any] = {
        "rows": ROWS,
        "seconds": seconds,
        "warmup_seconds": warmup,
        "rounds": rounds,
        "pool_size_per_worker": 10,
        "pgbouncer_default_pool_size": 20,
        "load_generator": "wrk -t1 -c32" if load is run_wrk else "httpx, 32 concurrent",
        "cpus": "unpinned: wrk, workers, pgbouncer and both servers share 2 CPUs",
    }
    write_results("deploy", measurements, [], params, baselines)
