"""``litestar``: the HTTP read and the session read on Litestar, ours against Advanced
Alchemy's Litestar plugin, side by side in one run (issue 15).

(a) **HTTP read**: ``GET /items/{id}`` answered as ``{"id", "name", "category", "price"}``
    from ``bench_items`` (:mod:`bench.models`, 10,000 rows), with a pool of 10:
    ours (``AegisPlugin`` + the request's ``db_session`` + ``ItemRepository.get_one``,
    ``bench/apps/litestar_ours_app.py``) and Advanced Alchemy's ``SQLAlchemyPlugin`` with
    ``before_send_handler="autocommit"`` and its repository service
    (``bench/apps/litestar_aa_app.py``), beside the same endpoint on FastAPI ours
    (``bench/apps/ours_app.py``, reference). Each app answers ``GET /items/1`` and a
    missing id (404) as expected before timing; wrk cycles the ids with
    ``bench/apps/items.lua``.

(b) **Session read**: ``GET /session-read`` answers the visitor's session data. 200
    sessions per app are made before timing through the app's own ``POST
    /session-write`` (the data of :func:`bench.sessions._data`), and every one is read
    back and checked, before and after the rounds; wrk cycles their cookies. Ours is our
    session cookie middleware on a :class:`~aegis_shared.sessions.SessionStore`
    (``AegisPlugin(sessions=store)``, a touch at most every 5 minutes); Advanced Alchemy's
    is Litestar's ``SessionMiddleware`` with its ``SQLAlchemyAsyncSessionBackend`` (which
    slides the expiry and commits on every read, and Litestar's middleware then stores the
    session again on every response).

Placement and load as :mod:`bench.http` (its helpers): one uvicorn worker per app on a CPU
of its own, wrk and the PostgreSQL backends on the other, ``wrk -t1 -c32 --latency`` for
``seconds`` per run after a ``warmup`` of each app, ``rounds`` rounds with the apps in
rotated order (:func:`bench.sessions.http_level`); req/s, p50 and p99. Needs wrk.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from aegis_shared.database import DatabaseManager
from bench.common import (
    PG_URL,
    Goal,
    Measurement,
    evaluate_goals,
    fill_server_version,
    print_goals,
    print_table,
    recreate_database,
    write_results,
)
from bench.http import CONNECTIONS, LUA, App, _cpus
from bench.session_models import SessionBenchBase
from bench.sessions import _cookie_value, _data, _NoCookies, _write_lua, http_level

OURS = "ours on Litestar: AegisPlugin + db_session + ItemRepository.get_one"
AA = "Advanced Alchemy on Litestar: SQLAlchemyPlugin (autocommit) + repository service get"
FASTAPI_OURS = "ours on FastAPI: get_session + ItemRepository.get_one (reference)"
ITEM_APPS = {
    OURS: "bench.apps.litestar_ours_app:app",
    AA: "bench.apps.litestar_aa_app:app",
    FASTAPI_OURS: "bench.apps.ours_app:app",
}
ITEMS_CASE = "Litestar: GET /items/{id}"

OURS_SESSIONS = "ours on Litestar: AegisPlugin(sessions=SessionStore), touch every 5 min"
AA_SESSIONS = "Advanced Alchemy on Litestar: SQLAlchemyAsyncSessionBackend"
SESSION_APPS = {
    OURS_SESSIONS: "bench.apps.litestar_ours_app:sessions_app",
    AA_SESSIONS: "bench.apps.litestar_aa_app:sessions_app",
}
SESSIONS_CASE = "Litestar: GET /session-read"
SESSION_PATH = "/session-read"


class SessionReadApp(App):
    def check_answers(self) -> None:
        """A new visitor's session is empty."""
        response = httpx.get(f"{self.url}{SESSION_PATH}", timeout=2.0)
        if response.status_code != 200 or response.json() != {}:
            raise SystemExit(
                f"{self.name}: GET {SESSION_PATH} gave {response.status_code} {response.text}"
            )


async def _create_session_tables() -> None:
    """Ours' ``bench_sessions`` and Advanced Alchemy's ``bench_aa_sessions``."""
    from bench.aa_session_models import AASession

    db = DatabaseManager(PG_URL, pool_size=1, max_overflow=0)
    try:
        await db.create_all(SessionBenchBase.metadata)
        async with db.engine.begin() as conn:
            await conn.run_sync(AASession.__table__.create, checkfirst=True)  # type: ignore[attr-defined]
    finally:
        await db.close()


def _client(url: str) -> httpx.Client:
    # No cookie jar: each request says its visitor's cookie itself (or none).
    return httpx.Client(
        base_url=url, cookies=http.cookiejar.CookieJar(policy=_NoCookies()), timeout=30.0
    )


def _make_sessions(app: App, count: int) -> list[str]:
    """``count`` visitors through ``POST /session-write``, the ``index``-th with
    ``_data(index)``; their cookies."""
    cookies = []
    with _client(app.url) as client:
        for index in range(count):
            response = client.post("/session-write", json=_data(index))
            if response.status_code != 201 or response.json() != _data(index):
                raise SystemExit(
                    f"{app.name}: POST /session-write gave {response.status_code} {response.text}"
                )
            cookies.append(_cookie_value(response))
    return cookies


def _check_sessions(app: App, cookies: Sequence[str]) -> None:
    """Every cookie reads back its own session's data."""
    with _client(app.url) as client:
        for index, cookie in enumerate(cookies):
            response = client.get(SESSION_PATH, headers={"cookie": f"session={cookie}"})
            if response.status_code != 200 or response.json() != _data(index):
                raise SystemExit(
                    f"{app.name}: session {index} read {response.status_code} {response.text}, "
                    f"not {_data(index)}"
                )


def _stop(apps: Sequence[App]) -> None:
    for app in apps:
        app.stop()


def _http_read(
    rounds: int, seconds: int, warmup: int, cpus: tuple[set[int] | None, set[int] | None]
) -> list[Measurement]:
    app_cpus, load_cpus = cpus
    apps = {name: App(name, target, app_cpus) for name, target in ITEM_APPS.items()}
    try:
        for app in apps.values():
            app.wait_ready()
        return http_level(
            apps, dict.fromkeys(apps, LUA), rounds, seconds, warmup, load_cpus, ITEMS_CASE
        )
    finally:
        _stop(list(apps.values()))


def _session_read(
    rounds: int,
    seconds: int,
    warmup: int,
    count: int,
    cpus: tuple[set[int] | None, set[int] | None],
) -> list[Measurement]:
    app_cpus, load_cpus = cpus
    apps = {name: SessionReadApp(name, target, app_cpus) for name, target in SESSION_APPS.items()}
    try:
        for app in apps.values():
            app.wait_ready()
        cookies = {name: _make_sessions(app, count) for name, app in apps.items()}
        for name, app in apps.items():
            _check_sessions(app, cookies[name])
        with tempfile.TemporaryDirectory(prefix="bench-litestar-") as tmp:
            lua = {}
            for index, name in enumerate(apps):
                lua[name] = Path(tmp) / f"sessions{index}.lua"
                _write_lua(cookies[name], lua[name], SESSION_PATH)
            results = http_level(apps, lua, rounds, seconds, warmup, load_cpus, SESSIONS_CASE)
        for name, app in apps.items():
            _check_sessions(app, cookies[name])  # still every session's own data
        return results
    finally:
        _stop(list(apps.values()))


def run(rounds: int = 2, seconds: int = 10, warmup: int = 3, sessions: int = 200) -> None:
    """Run (a) and (b), print the tables and write ``bench/results/litestar.json``."""
    if shutil.which("wrk") is None:
        raise SystemExit("the litestar scenario needs wrk (apt-get install wrk)")
    asyncio.run(recreate_database())
    asyncio.run(fill_server_version())
    asyncio.run(_create_session_tables())
    cpus = _cpus()
    results = _http_read(rounds, seconds, warmup, cpus)
    print("  http read done")
    results += _session_read(rounds, seconds, warmup, sessions, cpus)
    print("  session read done")
    baselines = {ITEMS_CASE: AA, SESSIONS_CASE: AA_SESSIONS}
    # The same thresholds as the FastAPI scenarios' (http, sessions), against this peer.
    goals = evaluate_goals(
        results,
        [
            Goal("litestar GET /items/{id}: ours / Advanced Alchemy", ITEMS_CASE, OURS, AA, 1.5),
            Goal(
                "litestar GET /session-read: ours / Advanced Alchemy",
                SESSIONS_CASE,
                OURS_SESSIONS,
                AA_SESSIONS,
                1.2,
            ),
        ],
    )
    print_table(
        f"litestar: {CONNECTIONS} connections, {seconds}s per run, median of {rounds} rounds",
        results,
        baselines,
    )
    print_goals(goals)
    params: dict[str, Any] = {
        "command": f"wrk -t1 -c{CONNECTIONS} -d{seconds}s --timeout 5s --latency -s <script> <url>",
        "scripts": {
            ITEMS_CASE: "bench/apps/items.lua",
            SESSIONS_CASE: f"generated: cycles the {sessions} cookies of each app",
        },
        "sessions_per_app": sessions,
        "warmup_seconds": warmup,
        "seconds": seconds,
        "rounds": rounds,
        "pool_size": 10,
        "cpus": "app: one CPU of its own; wrk and PostgreSQL backends: the other"
        if cpus[0]
        else "unpinned",
    }
    write_results("litestar", results, goals, params, baselines)
