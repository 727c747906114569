"""``http``: ``GET /items/{id}`` through FastAPI apps under uvicorn, loaded by wrk: ours, two
peers, and the same endpoint on a raw asyncpg pool, alone and with a no-op yield dependency
(the limits of this stack, not peers).

Each app (``bench/apps``) runs as its own uvicorn process (one worker, uvloop and httptools
when installed, warnings only, no access log) on a free loopback port, with a pool of 10.
The app gets one CPU to itself; wrk and the apps' PostgreSQL backends share the other, so
the figure is the app's requests per second of one CPU. Each app is warmed up for 3 s,
then the apps are measured in turn (rotated each round) for 10 s each with
``wrk -t1 -c32 --latency`` and ``bench/apps/items.lua``, which cycles through the ids. Without
wrk, a bounded httpx client (32 concurrent requests, same duration) stands in.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.common import (
    ROOT,
    Goal,
    Measurement,
    asyncpg_dsn,
    database_name,
    evaluate_goals,
    fill_server_version,
    print_goals,
    print_table,
    recreate_database,
    write_results,
)
from tests.ports import free_port

APPS = {
    "ours: get_session + ItemRepository.get_one": "bench.apps.ours_app:app",
    "Advanced Alchemy: FastAPI extension + repository.get": "bench.apps.aa_app:app",
    "SQLModel-style: sessionmaker dependency + session.get": "bench.apps.sqlmodel_app:app",
    "asyncpg pool: pool.fetchrow, no ORM": "bench.apps.asyncpg_app:app",
    "asyncpg pool + a no-op yield dependency": "bench.apps.asyncpg_app:app_with_yield_dependency",
}
OURS = "ours: get_session + ItemRepository.get_one"
#: The limit of this stack, not a peer: the same endpoint on a raw asyncpg pool, and the same
#: with FastAPI's cost of a yield dependency added (see bench/apps/asyncpg_app.py).
RAW = "asyncpg pool: pool.fetchrow, no ORM"
RAW_WITH_DEPENDENCY = "asyncpg pool + a no-op yield dependency"
LUA = Path(__file__).resolve().parent / "apps" / "items.lua"
CONNECTIONS = 32


@dataclass
class LoadResult:
    requests_per_s: float
    requests: int
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    tool: str


def _cpus() -> tuple[set[int] | None, set[int] | None]:
    """(CPU for the app, CPUs for the load generator and PostgreSQL), or Nones."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2:
        return None, None
    return {cpus[-1]}, set(cpus[:-1])


def _pinned(cpus: set[int] | None) -> Any:
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


class App:
    def __init__(self, name: str, target: str, cpus: set[int] | None) -> None:
        self.name = name
        self.target = target
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            target,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            "--no-access-log",
        ]
        with contextlib.suppress(ImportError):
            import uvloop  # noqa: F401

            command += ["--loop", "uvloop"]
        with contextlib.suppress(ImportError):
            import httptools  # noqa: F401

            command += ["--http", "httptools"]
        self.command = command
        self.process = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, preexec_fn=_pinned(cpus)
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the app answers, then check its answers (:meth:`check_answers`)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"{self.name} exited with {self.process.returncode} at start")
            try:
                self.check_answers()
                return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.name} not ready after {timeout:.0f}s")
            time.sleep(0.2)

    def check_answers(self) -> None:
        """Raise SystemExit unless the app serves the benchmark's data as expected."""
        response = httpx.get(f"{self.url}/items/1", timeout=2.0)
        expected = {"id": 1, "name": "item 0", "category": "c0", "price": 0}
        if response.status_code != 200 or response.json() != expected:
            raise SystemExit(
                f"{self.name}: GET /items/1 gave {response.status_code} {response.text}"
            )
        missing = httpx.get(f"{self.url}/items/999999", timeout=2.0)
        if missing.status_code != 404:
            raise SystemExit(f"{self.name}: a missing id gave {missing.status_code}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _latency(text: str, percent: str) -> float | None:
    match = re.search(rf"^\s*{percent}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    return float(match.group(1)) * _UNITS[match.group(2)] if match else None


def run_wrk(url: str, seconds: int, cpus: set[int] | None, script: Path = LUA) -> LoadResult:
    wrk = shutil.which("wrk")
    assert wrk is not None
    command = [
        wrk,
        "-t1",
        f"-c{CONNECTIONS}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
        preexec_fn=_pinned(cpus),
    ).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if rate is None or total is None:
        raise SystemExit(f"cannot read wrk's output:\n{out}")
    errors = 0
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        errors += int(non_2xx.group(1))
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    if sockets:
        errors += sum(int(g) for g in sockets.groups())
    return LoadResult(
        float(rate.group(1)),
        int(total.group(1)),
        _latency(out, "50"),
        _latency(out, "99"),
        errors,
        "wrk",
    )


def run_httpx(url: str, seconds: int, cpus: set[int] | None) -> LoadResult:
    """Fallback load: ``CONNECTIONS`` concurrent requests for ``seconds`` (bounded)."""
    if cpus is not None:
        os.sched_setaffinity(0, cpus)

    async def load() -> LoadResult:
        latencies: list[float] = []
        errors = 0
        limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=5.0) as client:
            start = time.perf_counter()
            deadline = start + seconds
            counter = 0

            async def worker() -> None:
                nonlocal counter, errors
                while time.perf_counter() < deadline and counter < 10_000_000:
                    counter += 1
                    t0 = time.perf_counter()
                    try:
                        response = await client.get(f"/items/{(counter * 7919) % 10_000 + 1}")
                        ok = response.status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    latencies.append((time.perf_counter() - t0) * 1000)
                    errors += not ok

            await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
            elapsed = time.perf_counter() - start
        latencies.sort()

        def pct(p: float) -> float | None:
            return (
                latencies[min(len(latencies) - 1, int(len(latencies) * p))] if latencies else None
            )

        return LoadResult(
            len(latencies) / elapsed, len(latencies), pct(0.5), pct(0.99), errors, "httpx"
        )

    try:
        return asyncio.run(load())
    finally:
        if cpus is not None:
            os.sched_setaffinity(0, range(os.cpu_count() or 1))


async def _pin_backends(cpus: set[int] | None) -> int:
    """Pin the PostgreSQL backends of the apps' pools to ``cpus``; returns how many."""
    if cpus is None:
        return 0
    conn = await asyncpg.connect(asyncpg_dsn(database="postgres"))
    try:
        pids = await conn.fetch(
            "SELECT pid FROM pg_stat_activity "
            "WHERE datname = $1 AND backend_type = 'client backend'",
            database_name(),
        )
    finally:
        await conn.close()
    pinned = 0
    for row in pids:
        try:
            os.sched_setaffinity(row["pid"], cpus)
            pinned += 1
        except OSError:
            pass
    return pinned


def run(rounds: int = 2, seconds: int = 10, warmup: int = 3) -> None:
    asyncio.run(recreate_database())
    asyncio.run(fill_server_version())
    use_wrk = shutil.which("wrk") is not None
    load = run_wrk if use_wrk else run_httpx
    app_cpus, load_cpus = _cpus()
    apps = [App(name, target, app_cpus) for name, target in APPS.items()]
    measurements = {
        app.name: Measurement("GET /items/{id}", app.name, "req/s", note=app.target) for app in apps
    }
    p99: dict[str, list[float]] = {app.name: [] for app in apps}
    try:
        for app in apps:
            app.wait_ready()
        print(f"load generator: {'wrk' if use_wrk else 'httpx (wrk not found)'}")
        for app in apps:
            warm = load(app.url, warmup, load_cpus)
            print(f"  warm-up {app.name}: {warm.requests_per_s:,.0f} req/s")
        pinned = asyncio.run(_pin_backends(load_cpus))
        for round_no in range(rounds):
            shift = round_no % len(apps)
            for app in apps[shift:] + apps[:shift]:
                result = load(app.url, seconds, load_cpus)
                if result.errors:
                    raise SystemExit(f"{app.name}: {result.errors} failed requests")
                measurements[app.name].rates.append(result.requests_per_s)
                if result.p99_ms is not None:
                    p99[app.name].append(result.p99_ms)
                measurements[app.name].extra.setdefault("rounds", []).append(
                    {
                        "requests": result.requests,
                        "requests_per_s": result.requests_per_s,
                        "p50_ms": result.p50_ms,
                        "p99_ms": result.p99_ms,
                    }
                )
            print(f"  round {round_no + 1}/{rounds} done")
    finally:
        for app in apps:
            app.stop()
    results = list(measurements.values())
    for m in results:
        values = p99[m.contender]
        m.extra["p99_ms"] = statistics.median(values) if values else None
        m.note = f"{m.note}; p99 {m.extra['p99_ms']:.1f} ms" if values else m.note
    peers = [m for m in results if m.contender not in (OURS, RAW, RAW_WITH_DEPENDENCY) and m.rate]
    best = max(peers, key=lambda m: m.rate or 0.0)
    baselines = {"GET /items/{id}": best.contender}
    goals = evaluate_goals(
        results,
        [
            Goal("http: ours / best peer (req/s)", "GET /items/{id}", OURS, best.contender, 1.5),
            Goal("http: ours / raw asyncpg pool (req/s)", "GET /items/{id}", OURS, RAW, 0.85),
        ],
    )
    print_table(
        f"http: {CONNECTIONS} connections, {seconds}s per run, median of {rounds} rounds",
        results,
        baselines,
    )
    print_goals(goals)
    write_results(
        "http",
        results,
        goals,
        {
            "load_generator": "wrk" if use_wrk else "httpx",
            "command": (
                f"wrk -t1 -c{CONNECTIONS} -d{seconds}s --timeout 5s --latency "
                "-s bench/apps/items.lua <url>"
                if use_wrk
                else f"httpx, {CONNECTIONS} concurrent, {seconds}s"
            ),
            "warmup_seconds": warmup,
            "seconds": seconds,
            "rounds": rounds,
            "uvicorn": " ".join(["uvicorn", "<app>", *apps[0].command[5:]]) if apps else "",
            "pool_size": 10,
            "cpus": "app: one CPU of its own; wrk and PostgreSQL backends: the other"
            if app_cpus
            else "unpinned",
            "backends_pinned": pinned if app_cpus else 0,
        },
        baselines,
    )
