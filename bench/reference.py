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
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    RESULTS_DIR,
    fill_server_version,
    print_table,
    recreate_database,
    write_results,
)
from bench.http import App, _cpus
from bench.sessions import _cookie_value, _write_lua, http_level

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
CASE = "reference application pages"
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
        return _cookie_value(added)


async def _visitors(url: str, count: int, pages: bool) -> list[str]:
    cookies: list[str] = []
    for start in range(0, count, 20):
        batch = range(start, min(start + 20, count))
        cookies += await asyncio.gather(*(_visitor(url, i, pages) for i in batch))
    return cookies


def _write_anonymous_lua(path: Path, page: str) -> None:
    """A wrk script: ``GET page`` without a cookie (pages with one: sessions._write_lua)."""
    lines = [f"-- wrk script: GET {page} (written by bench/reference.py)"]
    lines += ["request = function()", f'  return wrk.format("GET", "{page}")', "end"]
    path.write_text("\n".join(lines) + "\n")


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
            if cookie:
                _write_lua(cookies[app_name], lua[page], path)
            else:
                _write_anonymous_lua(lua[page], path)
        # Each page is one contender of the case, on the app that serves it.
        by_page = {page: apps[app_name] for page, (app_name, _, _) in PAGES.items()}
        results = http_level(by_page, lua, rounds, seconds, warmup, load_cpus, case=CASE)
    finally:
        for app in apps.values():
            app.stop()
    print_table(CASE, results, {})
    params: dict[str, Any] = {
        "rounds": rounds,
        "seconds": seconds,
        "warmup": warmup,
        "visitors": VISITORS,
        "command": f"wrk -t1 -c32 -d{seconds}s --timeout 5s --latency -s <page script>",
        "cpus": "app: one CPU of its own; wrk and PostgreSQL backends: the other",
    }
    write_results("reference", results, [], params, {})
