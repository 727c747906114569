"""The reference application (aegis_demo.app) under a real uvicorn server, with a real
HTTP client, on SQLite, PostgreSQL and MariaDB: seed data made once, the access log and
its failures, the housekeeping job, CSRF on state changes, the pages, the operator panel,
offline /docs and the documented errors."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import MetaData, func, select, text

from aegis_demo import seed
from aegis_demo.fridge.models import Ingredient
from aegis_demo.jobs import Housekeeping
from aegis_demo.models import AccessLog
from aegis_demo.realtime.models import Comment, Post
from aegis_demo.web.operator import UNAVAILABLE
from aegis_shared.database import DatabaseManager
from aegis_shared.models import utcnow
from tests import sse
from tests.conftest import MakeDb
from tests.demo import ADMIN_TOKEN, TIMEOUT, browser_like, running
from tests.waiting import until


@pytest.fixture
async def db(make_db: MakeDb) -> DatabaseManager:
    """A default manager on an empty database: the app makes its own tables."""
    return await make_db(MetaData(), pool_size=5, max_overflow=10)


async def count(db: DatabaseManager, model: Any) -> int:
    async with db.session() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_seed_data_is_made_once_when_two_processes_start_at_once(
    db: DatabaseManager, make_db: MakeDb
) -> None:
    # A second manager on the same database stands in for a second worker process.
    other = await make_db(default=False, pool_size=5)
    await asyncio.gather(seed.prepare(db), seed.prepare(other))
    await seed.prepare(db)  # and a restart
    assert await count(db, Post) == len(seed.POSTS)
    assert await count(db, Comment) == sum(len(comments) for _, comments in seed.POSTS)
    assert await count(db, Ingredient) == 8


async def test_every_request_is_logged_after_its_answer_without_its_query_string(
    db: DatabaseManager,
) -> None:
    async with running(db) as base, httpx.AsyncClient(base_url=base) as client:
        response = await client.get("/ingredients", params={"token": "secret-in-query"})
        assert response.status_code == 200
        missing = await client.get("/api/v1/posts/999")
        assert missing.status_code == 404

        async def logged() -> bool:
            return await count(db, AccessLog) >= 2

        await until(logged)
    async with db.session() as session:
        rows = (await session.scalars(select(AccessLog).order_by(AccessLog.id))).all()
    seen = [(r.method, r.path, r.status) for r in rows]
    assert ("GET", "/ingredients", 200) in seen
    assert ("GET", "/api/v1/posts/999", 404) in seen
    assert all("secret" not in r.path for r in rows)
    assert all(r.duration_ms >= 0 for r in rows)


async def test_a_request_whose_log_write_fails_still_answers(
    db: DatabaseManager, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "aegis_demo.access_log")
    async with running(db) as base, httpx.AsyncClient(base_url=base) as client:
        async with db.engine.begin() as conn:
            await conn.execute(text("DROP TABLE demo_access_log"))  # a real fault
        for _ in range(3):
            response = await client.get("/ingredients")
            assert response.status_code == 200
            assert len(response.json()) == 8
        page = await client.get("/posts")
        assert page.status_code == 200
        assert "Welcome to the aegis-shared demo" in page.text

        async def failed() -> bool:
            return sum("could not write the access log" in m for m in caplog.messages) >= 4

        await until(failed)
    messages = [m for m in caplog.messages if "access log" in m]
    assert all("demo_access_log" in m and "GET" in m for m in messages)
    # The class of the error only: never the database's text (SQL, table, host).
    assert not any("DROP" in m or "127.0.0.1" in m or "no such table" in m for m in messages)


async def test_housekeeping_trims_the_access_log_through_provide_services(
    db: DatabaseManager,
) -> None:
    job = Housekeeping(every=timedelta(hours=1), retention=timedelta(hours=1))
    async with running(db, housekeeping=job):
        async with db.session() as session:
            session.add_all(
                [
                    AccessLog(
                        method="GET",
                        path="/old",
                        status=200,
                        duration_ms=1,
                        created_at=utcnow() - timedelta(hours=2),
                    ),
                    AccessLog(method="GET", path="/new", status=200, duration_ms=1),
                ]
            )
            await session.commit()
        trimmed = await job.sweep()
    assert trimmed == 1
    assert job.last is not None
    assert job.last.trimmed == 1
    assert job.last.access_log_rows >= 1
    async with db.session() as session:
        paths = set((await session.scalars(select(AccessLog.path))).all())
    assert "/old" not in paths
    assert "/new" in paths


async def test_state_changes_need_the_pages_csrf_token(db: DatabaseManager) -> None:
    async with running(db) as base, browser_like(base) as (client, headers):
        body = {"ingredient_ids": [1]}
        refused = await client.post(
            "/fridge/ingredients",
            json=body,
            headers={k: v for k, v in headers.items() if k != "X-CSRF-Token"},
        )
        assert refused.status_code == 403
        assert refused.json()["error"] == "csrf"
        cross = await client.post(
            "/fridge/ingredients",
            json=body,
            headers={**headers, "Sec-Fetch-Site": "cross-site", "Origin": "https://evil.test"},
        )
        assert cross.status_code == 403
        added = await client.post("/fridge/ingredients", json=body, headers=headers)
        assert added.status_code == 200
        assert [i["name"] for i in added.json()["ingredients"]] == ["milk"]


PAGES = ["/", "/my-fridge", "/posts", "/chat", "/operator"]


async def test_pages_render_with_a_strict_content_security_policy(db: DatabaseManager) -> None:
    async with running(db) as base, httpx.AsyncClient(base_url=base) as client:
        for path in PAGES:
            page = await client.get(path)
            assert page.status_code == 200, path
            assert page.headers["content-type"].startswith("text/html")
            policy = page.headers["content-security-policy"]
            script_src = re.search(r"script-src ([^;]*)", policy)
            assert script_src is not None
            assert script_src.group(1).split() == ["'self'"]
            assert page.headers["x-frame-options"] == "DENY"
            # No inline script and no inline event handler in any page.
            assert re.search(r"<script(?![^>]*\bsrc=)", page.text) is None, path
            assert re.search(r"\son[a-z]+=", page.text) is None, path
        for asset in ("/static/app.js", "/static/app.css", "/static/favicon.svg"):
            assert (await client.get(asset)).status_code == 200, asset
        posts = (await client.get("/posts")).text
        for title, comments in seed.POSTS:
            assert title in posts
            assert all(comment in posts for comment in comments)


async def test_error_pages_are_safe_for_browsers_and_json_for_clients(
    db: DatabaseManager,
) -> None:
    async with running(db) as base, httpx.AsyncClient(base_url=base) as client:
        page = await client.get("/no/such/page", headers={"Accept": "text/html"})
        assert page.status_code == 404
        assert "There is no page here." in page.text
        assert "/no/such/page" not in page.text  # nothing of the request echoed
        api = await client.get("/no/such/page")
        assert api.status_code == 404
        assert api.json() == {"detail": "Not Found"}
        post = await client.get("/api/v1/posts/2147483648")
        # Beyond the column's range: "no such post" or refused, never a 500.
        assert post.status_code in (404, 422)
        assert "2147483648" not in post.text or post.status_code == 404


async def test_a_database_failure_shows_a_safe_page_and_a_safe_json_body(
    db: DatabaseManager, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    server_log = logging.getLogger("uvicorn.error")
    try:
        async with running(db) as base, httpx.AsyncClient(base_url=base) as client:
            # uvicorn configures its logger at start, not to propagate: listen to it.
            server_log.addHandler(caplog.handler)
            async with db.engine.begin() as conn:
                await conn.execute(text("DROP TABLE realtime_comments"))  # a real fault
            page = await client.get("/posts", headers={"Accept": "text/html"})
            api = await client.get("/api/v1/posts")
    finally:
        server_log.removeHandler(caplog.handler)
    assert page.status_code == api.status_code == 500
    assert page.headers["content-type"].startswith("text/html")
    assert "Something went wrong on our side" in page.text
    # The library's body when the error reached it as a DatabaseError, else FastAPI's.
    assert api.json().get("error", "internal") == "internal"
    assert "detail" in api.json()
    for body in (page.text, api.text):
        assert "realtime_comments" not in body
        assert "SELECT" not in body
    # The operator still learns what happened, from the log.
    assert "realtime_comments" in caplog.text


async def test_comments_are_added_to_existing_posts_only(db: DatabaseManager) -> None:
    async with running(db) as base, browser_like(base) as (client, headers):
        posts = (await client.get("/api/v1/posts")).json()
        first = posts[0]["id"]
        added = await client.post(
            f"/api/v1/posts/{first}/comments", json={"body": "<b>bold?</b>"}, headers=headers
        )
        assert added.status_code == 201
        assert added.json()["body"] == "<b>bold?</b>"
        missing = await client.post(
            "/api/v1/posts/99999/comments", json={"body": "hello"}, headers=headers
        )
        assert missing.status_code == 404
        assert missing.json()["error"] == "not_found"
        empty = await client.post(
            f"/api/v1/posts/{first}/comments", json={"body": ""}, headers=headers
        )
        assert empty.status_code == 422
        page = (await client.get("/posts")).text
    assert "&lt;b&gt;bold?&lt;/b&gt;" in page  # escaped, never markup
    assert "<b>bold?</b>" not in page


async def test_the_operator_panel_is_off_without_a_token(db: DatabaseManager) -> None:
    async with running(db, admin_token="") as base, browser_like(base) as (client, headers):
        refused = await client.post("/operator/login", json={"token": "anything"}, headers=headers)
        assert refused.status_code == 403
        assert "FRIDGE_ADMIN_TOKEN" in refused.json()["detail"]
        assert (await client.get("/operator/stream")).status_code == 403
        assert (await client.get("/admin/session-stats")).status_code == 403


async def test_the_operator_signs_in_sees_live_figures_and_signs_out(
    db: DatabaseManager,
) -> None:
    async with running(db) as base, browser_like(base) as (client, headers):
        assert (await client.get("/operator/stream")).status_code == 403
        wrong = await client.post("/operator/login", json={"token": "nope"}, headers=headers)
        assert wrong.status_code == 401
        before = client.cookies.get("session")
        ok = await client.post("/operator/login", json={"token": ADMIN_TOKEN}, headers=headers)
        assert ok.status_code == 204
        assert client.cookies.get("session") not in (None, before)  # rotated
        await client.post("/fridge/ingredients", json={"ingredient_ids": [2]}, headers=headers)
        async with client.stream("GET", "/operator/stream") as stream:
            assert stream.status_code == 200
            async for message in sse.messages(stream.aiter_lines()):
                overview = json.loads(message["data"])
                break
        assert set(overview) == {
            "pools",
            "stored",
            "sessions",
            "access_log",
            "housekeeping",
            "events",
        }
        # Counted through provide_services(..., session=) on the panel's own unit of work.
        assert overview["stored"]["access_log_rows"] >= 1
        assert overview["stored"]["chat_answers"] >= 0
        assert overview["sessions"]["active"] >= 1
        assert overview["sessions"]["ingredients"] == 1
        assert {"main", "background"} <= set(overview["pools"])
        assert overview["events"][0]["channel"].startswith("fridge:")
        assert ADMIN_TOKEN not in json.dumps(overview)
        out = await client.post("/operator/logout", headers=headers)
        assert out.status_code == 204
        assert (await client.get("/operator/stream")).status_code == 403


async def test_the_operator_panel_reports_a_failed_read_and_goes_on(
    db: DatabaseManager, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "aegis_demo.operator")
    async with running(db) as base, browser_like(base) as (client, headers):
        ok = await client.post("/operator/login", json={"token": ADMIN_TOKEN}, headers=headers)
        assert ok.status_code == 204
        async with db.engine.begin() as conn:
            await conn.execute(text("DROP TABLE demo_access_log"))  # a real fault
        async with client.stream("GET", "/operator/stream") as stream:
            assert stream.status_code == 200
            messages = sse.messages(stream.aiter_lines())
            failed = await anext(messages)
            assert failed["event"] == "unavailable"
            assert json.loads(failed["data"]) == {"detail": UNAVAILABLE}
            async with db.engine.begin() as conn:  # the fault mended: the stream goes on
                await conn.run_sync(AccessLog.__table__.create)
            mended = await anext(messages)
        assert mended["event"] == "overview"
        assert "stored" in json.loads(mended["data"])
    warnings = [r.getMessage() for r in caplog.records if r.name == "aegis_demo.operator"]
    assert warnings and all("could not read its figures" in m for m in warnings)
    # The class of the error only: never the database's text (SQL, table, host).
    assert not any("demo_access_log" in m or "no such table" in m for m in warnings)


ASSET = re.compile(r"""(?:src|href)=["']([^"']+)["']|url: ['"]([^'"]+)['"]""")


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_docs_work_offline_and_document_every_error(db: DatabaseManager) -> None:
    async with running(db) as base, httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as client:
        docs = await client.get("/docs")
        assert docs.status_code == 200
        assert re.search(r"https?://", docs.text) is None, docs.text
        assets = [a or b for a, b in ASSET.findall(docs.text)]
        assert any(a.endswith(".js") for a in assets)
        assert any(a.endswith(".css") for a in assets)
        for asset in assets:
            assert (await client.get(asset)).status_code == 200, asset
        policy = docs.headers["content-security-policy"]
        assert "'unsafe-inline'" not in re.search(r"script-src ([^;]*)", policy).group(1)  # type: ignore[union-attr]
        schema = (await client.get("/openapi.json")).json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            errors = {s: r for s, r in operation["responses"].items() if s[0] in "45"}
            assert errors, (method, path)
            for status, answer in errors.items():
                assert "application/json" in answer["content"], (method, path, status)
    login = schema["paths"]["/operator/login"]["post"]["responses"]
    assert {"401", "403"} <= set(login)
    stats = schema["paths"]["/admin/session-stats"]["get"]["responses"]
    assert {"401", "403"} <= set(stats)
