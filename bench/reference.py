"""``reference``: the reference application's main pages under load, beside the fridge alone.

The reference application (``aegis_demo.app``, ``bench/apps/reference_app.py``) and the
fridge example alone (``bench/apps/fridge_ours_app.py``, the ``sessions`` scenario's app)
run as uvicorn processes on the benchmark database (PostgreSQL, pools of 10), one worker
each on a CPU of its own; wrk and the PostgreSQL backends share the other CPU, as in
``http`` and ``sessions``. 200 visitors are made first, each loading ``/`` (which gives
the CSRF token the pages' script sends) and putting three ingredients in its fridge;
wrk then cycles through their session cookies where a page needs one. Each page is
measured for 10 s per round with ``wrk -t1 -c32 --latency``, in rotated order:

* ``GET /``: the home page (HTML), anonymous;
* ``GET /posts``: the posts with their comments (HTML), anonymous;
* ``GET /my-fridge``: a visitor's fridge page (HTML: the session, the fridge and the
  catalogue);
* ``GET /fridge``: the same visitor's fridge as JSON, in the reference app and in the
  fridge alone (the ``sessions`` scenario's ``GET /fridge``): what the rest of the
  reference app (security headers, the access log, CSRF cookie, error pages) costs;
* ``GET /api/v1/posts/{id}``: seed 003's post with its comments (JSON).

Every answer of the set-up is checked (status, content) before anything is timed, and a
round with any non-2xx answer or socket error stops the scenario.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import statistics
from collections.abc import Sequence
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    RESULTS_DIR,
    Measurement,
    fill_server_version,
    print_table,
    recreate_database,
    write_results,
)
from bench.http import App, LoadResult, _cpus, _pin_backends, run_wrk

REFERENCE = "reference app"
FRIDGE_ALONE = "fridge example alone"
VISITORS = 200
#: page name -> (app, path, needs a session cookie)
PAGES: dict[str, tuple[str, str, bool]] = {
    "GET / (home page)": (REFERENCE, "/", False),
    "GET /posts (page)": (REFERENCE, "/posts", False),
    "GET /my-fridge (page)": (REFERENCE, "/my-fridge", True),
    "GET /fridge (JSON)": (REFERENCE, "/fridge", True),
    "GET /fridge (JSON), fridge alone": (FRIDGE_ALONE, "/fridge", True),
    "GET /api/v1/posts/{id} (JSON)": (REFERENCE, "/api/v1/posts/1", False),
}
TARGETS = {
    REFERENCE: "bench.apps.reference_app:app",
    FRIDGE_ALONE: "bench.apps.fridge_ours_app:app",
}
_CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)"')


class PageApp(App):
    def check_answers(self) -> None:
        """The app is up and shows an empty fridge to a new visitor."""
        response = httpx.get(f"{self.url}/fridge", timeout=2.0)
        if response.status_code != 200 or response.json()["ingredients"] != []:
            raise SystemExit(f"{self.name}: GET /fridge gave {response.status_code}")


def _session_cookie(response: httpx.Response) -> str:
    cookie: SimpleCookie = SimpleCookie()
    for header in response.headers.get_list("set-cookie"):
        cookie.load(header)
    if "session" not in cookie or not cookie["session"].value:
        raise SystemExit(f"no session cookie in {response.headers.get_list('set-cookie')}")
    return cookie["session"].value


async def _visitor(url: str, index: int, pages: bool) -> str:
    """One visitor filling its fridge; its session cookie. With ``pages`` (the reference
    app), it loads ``/`` first as a browser would, for the CSRF token its script sends."""
    ids = [index % 8 + 1, (index + 3) % 8 + 1, (index + 5) % 8 + 1]
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
        headers: dict[str, str] = {"Origin": url, "Sec-Fetch-Site": "same-origin"}
        if pages:
            home = await client.get("/")
            found = _CSRF_META.search(home.text)
            if home.status_code != 200 or found is None:
                raise SystemExit(f"{url}: GET / gave {home.status_code} without a CSRF token")
            headers["X-CSRF-Token"] = found.group(1)
        added = await client.post(
            "/fridge/ingredients", json={"ingredient_ids": ids}, headers=headers
        )
        if added.status_code != 200 or len(added.json()["ingredients"]) != 3:
            raise SystemExit(f"{url}: POST /fridge/ingredients gave {added.text[:200]}")
        if pages:
            page = await client.get("/my-fridge")
            if page.status_code != 200 or "<html" not in page.text.lower():
                raise SystemExit(f"{url}: GET /my-fridge gave {page.status_code}")
        return _session_cookie(added)


async def _visitors(url: str, count: int, pages: bool) -> list[str]:
    cookies: list[str] = []
    for start in range(0, count, 20):
        batch = range(start, min(start + 20, count))
        cookies += await asyncio.gather(*(_visitor(url, i, pages) for i in batch))
    return cookies


def _write_lua(path: Path, page: str, cookies: Sequence[str] | None) -> None:
    lines = [f"-- wrk script: GET {page} (written by bench/reference.py)"]
    if cookies:
        lines += [
            "local cookies = {",
            *(f'  "session={cookie}",' for cookie in cookies),
            "}",
            "local n = 0",
            "request = function()",
            "  n = n + 1",
            "  local cookie = cookies[(n * 7919) % #cookies + 1]",
            f'  return wrk.format("GET", "{page}", {{["Cookie"] = cookie}})',
            "end",
        ]
    else:
        lines += ["request = function()", f'  return wrk.format("GET", "{page}")', "end"]
    path.write_text("\n".join(lines) + "\n")


def _load(name: str, app: App, lua: Path, seconds: int, cpus: set[int] | None) -> LoadResult:
    result = run_wrk(app.url, seconds, cpus, script=lua)
    if result.errors:
        raise SystemExit(f"{name}: {result.errors} failed requests")
    return result


def run(rounds: int = 2, seconds: int = 10, warmup: int = 3) -> None:
    """Measure every page of :data:`PAGES` for ``rounds`` rounds of ``seconds``."""
    if shutil.which("wrk") is None:
        raise SystemExit("the reference scenario needs wrk (apt-get install wrk)")
    asyncio.run(recreate_database(seed_rows=0))
    asyncio.run(fill_server_version())
    app_cpus, load_cpus = _cpus()
    apps = {name: PageApp(name, target, app_cpus) for name, target in TARGETS.items()}
    scripts = RESULTS_DIR / "reference-lua"
    scripts.mkdir(parents=True, exist_ok=True)
    measurements = {
        page: Measurement(page, app, "req/s", note=path) for page, (app, path, _) in PAGES.items()
    }
    try:
        for app in apps.values():
            app.wait_ready(timeout=60)
        cookies = {
            name: asyncio.run(_visitors(app.url, VISITORS, pages=name == REFERENCE))
            for name, app in apps.items()
        }
        lua: dict[str, Path] = {}
        for index, (page, (app_name, path, cookie)) in enumerate(PAGES.items()):
            lua[page] = scripts / f"page-{index}.lua"
            _write_lua(lua[page], path, cookies[app_name] if cookie else None)
        for page, (app_name, _, _) in PAGES.items():
            warm = _load(page, apps[app_name], lua[page], warmup, load_cpus)
            print(f"  warm-up {page}: {warm.requests_per_s:,.0f} req/s")
        asyncio.run(_pin_backends(load_cpus))
        order = list(PAGES)
        for round_no in range(rounds):
            shift = round_no % len(order)
            for page in order[shift:] + order[:shift]:
                app_name = PAGES[page][0]
                result = _load(page, apps[app_name], lua[page], seconds, load_cpus)
                m = measurements[page]
                m.rates.append(result.requests_per_s)
                m.extra.setdefault("rounds", []).append(
                    {
                        "requests_per_s": result.requests_per_s,
                        "p50_ms": result.p50_ms,
                        "p99_ms": result.p99_ms,
                        "requests": result.requests,
                    }
                )
            print(f"  round {round_no + 1}/{rounds} done")
    finally:
        for app in apps.values():
            app.stop()
    for m in measurements.values():
        p99 = [r["p99_ms"] for r in m.extra["rounds"] if r["p99_ms"] is not None]
        p50 = [r["p50_ms"] for r in m.extra["rounds"] if r["p50_ms"] is not None]
        m.extra["p50_ms"] = statistics.median(p50) if p50 else None
        m.extra["p99_ms"] = statistics.median(p99) if p99 else None
        m.note = f"{m.contender}, {m.note}"
        if p50 and p99:
            m.note += f"; p50 {m.extra['p50_ms']:.2f} ms, p99 {m.extra['p99_ms']:.2f} ms"
    results = list(measurements.values())
    print_table("reference application pages", results, {})
    params: dict[str, Any] = {
        "rounds": rounds,
        "seconds": seconds,
        "warmup": warmup,
        "visitors": VISITORS,
        "command": f"wrk -t1 -c32 -d{seconds}s --timeout 5s --latency -s <page script>",
        "cpus": "app: one CPU of its own; wrk and PostgreSQL backends: the other",
    }
    write_results("reference", results, [], params, {})
