"""The fridge example (seed 002) through its real FastAPI app, a real HTTP client with a
cookie jar, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from aegis_demo.fridge.app import CATALOGUE, create_app
from aegis_demo.fridge.models import FridgeBase, UserFridgeIngredient, UserFridgeSession
from aegis_shared.database import DatabaseManager
from aegis_shared.sessions import SessionStore
from aegis_shared.testing import count_queries
from tests.conftest import MakeDb
from tests.http import serve

MILK, EGGS, BUTTER, CARROT = 1, 2, 3, 4
ADMIN_TOKEN = "test-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


class Fridge:
    def __init__(self, app: FastAPI, db: DatabaseManager, clock: Clock) -> None:
        self.app, self.db, self.clock = app, db, clock

    def client(self) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app)
        return httpx.AsyncClient(transport=transport, base_url="http://localhost")

    async def rows(self) -> int:
        async with self.db.session() as session:
            statement = select(func.count()).select_from(UserFridgeIngredient)
            return int(await session.scalar(statement) or 0)


@pytest.fixture
async def fridge(make_db: MakeDb) -> AsyncIterator[Fridge]:
    db = await make_db(FridgeBase.metadata)
    clock = Clock()
    store = SessionStore(db, UserFridgeSession, idle_timeout=timedelta(hours=24), clock=clock)
    app = create_app(
        db,
        store=store,
        sweep_every=timedelta(hours=1),
        admin_token=ADMIN_TOKEN,
        secure_cookie=False,
    )
    async with app.router.lifespan_context(app):
        yield Fridge(app, db, clock)


def names(body: dict[str, Any]) -> list[str]:
    return [item["name"] for item in body["ingredients"]]


async def test_a_new_visitor_sees_an_empty_fridge_and_gets_no_session(fridge: Fridge) -> None:
    async with fridge.client() as client:
        response = await client.get("/fridge")
        assert response.json() == {"user": None, "ingredients": []}
        assert "set-cookie" not in response.headers
        catalogue = (await client.get("/ingredients")).json()
    assert [(i["name"], i["category"]) for i in catalogue] == CATALOGUE


async def test_adding_shows_the_fridge_with_its_ingredients_and_is_idempotent(
    fridge: Fridge,
) -> None:
    async with fridge.client() as client:
        added = await client.post("/fridge/ingredients", json={"ingredient_ids": [MILK, EGGS]})
        assert added.status_code == 200
        assert "set-cookie" in added.headers  # the first write started the session
        assert names(added.json()) == ["milk", "eggs"]
        again = await client.post(
            "/fridge/ingredients", json={"ingredient_ids": [EGGS, MILK, EGGS, BUTTER]}
        )
        assert again.status_code == 200
        assert sorted(names(again.json())) == ["butter", "eggs", "milk"]
        shown = (await client.get("/fridge")).json()
    assert sorted(names(shown)) == ["butter", "eggs", "milk"]
    assert {i["category"] for i in shown["ingredients"]} == {"dairy"}
    assert await fridge.rows() == 3


async def test_a_hundred_concurrent_adds_of_one_ingredient_leave_one_row(fridge: Fridge) -> None:
    async with fridge.client() as client:
        await client.post("/fridge/ingredients", json={"ingredient_ids": [MILK]})
        responses = await asyncio.gather(
            *(
                client.post("/fridge/ingredients", json={"ingredient_ids": [CARROT]})
                for _ in range(100)
            )
        )
        assert [r.status_code for r in responses] == [200] * 100
        shown = (await client.get("/fridge")).json()
    assert sorted(names(shown)) == ["carrot", "milk"]
    assert await fridge.rows() == 2


async def test_removing_returns_the_count(fridge: Fridge) -> None:
    async with fridge.client() as client:
        nothing = await client.request(
            "DELETE", "/fridge/ingredients", json={"ingredient_ids": [MILK]}
        )
        assert nothing.json() == {"removed": 0}  # no session yet: nothing to remove
        await client.post("/fridge/ingredients", json={"ingredient_ids": [MILK, EGGS, BUTTER]})
        removed = await client.request(
            "DELETE", "/fridge/ingredients", json={"ingredient_ids": [MILK, EGGS, CARROT]}
        )
        assert removed.json() == {"removed": 2}
        assert names((await client.get("/fridge")).json()) == ["butter"]


async def test_bad_requests_change_nothing(fridge: Fridge) -> None:
    async with fridge.client() as client:
        empty = await client.post("/fridge/ingredients", json={"ingredient_ids": []})
        assert empty.status_code == 422
        for impossible in (2**70, 2**31, 0, -1):
            for method in ("POST", "DELETE"):
                response = await client.request(
                    method, "/fridge/ingredients", json={"ingredient_ids": [MILK, impossible]}
                )
                assert response.status_code == 422, (method, impossible)
        unknown = await client.post("/fridge/ingredients", json={"ingredient_ids": [MILK, 999]})
        assert unknown.status_code == 409
        assert unknown.json()["error"] == "invalid_reference"
        assert (await client.get("/fridge")).json()["ingredients"] == []
    assert await fridge.rows() == 0


async def test_login_keeps_the_fridge_under_a_new_id_and_logout_empties_it(
    fridge: Fridge,
) -> None:
    async with fridge.client() as client:
        await client.post("/fridge/ingredients", json={"ingredient_ids": [MILK, EGGS]})
        before = client.cookies["session"]
        login = await client.post("/login", json={"user": "alice"})
        assert login.status_code == 200
        after = client.cookies["session"]
        assert after != before
        shown = (await client.get("/fridge")).json()
        assert shown["user"] == "alice"
        assert names(shown) == ["milk", "eggs"]

        async with fridge.client() as thief:
            thief.cookies.set("session", before)
            assert (await thief.get("/fridge")).json() == {"user": None, "ingredients": []}

        logout = await client.post("/logout")
        assert logout.status_code == 200
        assert "session" not in client.cookies
        assert (await client.get("/fridge")).json() == {"user": None, "ingredients": []}
    assert await fridge.rows() == 0  # ON DELETE CASCADE


async def _cleanup_finished(client: httpx.AsyncClient) -> dict[str, Any]:
    """Start a cleanup job and poll its status page until it ends; its last status."""
    started = await client.post("/admin/cleanup-sessions", headers=ADMIN)
    assert started.status_code == 202
    job = started.json()["job"]
    assert started.headers["location"] == job["status_url"]
    async with asyncio.timeout(10):
        while job["status"] == "running":
            await asyncio.sleep(0.01)
            job = (await client.get(job["status_url"], headers=ADMIN)).json()
    return dict(job)


async def test_admin_stats_and_cleanup(fridge: Fridge) -> None:
    async with fridge.client() as old, fridge.client() as recent:
        await old.post("/fridge/ingredients", json={"ingredient_ids": [MILK, EGGS]})
        fridge.clock.now += timedelta(hours=20)
        await recent.post("/fridge/ingredients", json={"ingredient_ids": [BUTTER]})
        fridge.clock.now += timedelta(hours=5)  # the first session is 25 hours idle
        async with fridge.client() as admin:
            stats = (await admin.get("/admin/session-stats", headers=ADMIN)).json()
            assert (stats["active_sessions"], stats["expired_waiting"]) == (1, 1)
            assert stats["total_ingredients"] == 3
            job = await _cleanup_finished(admin)
            assert (job["status"], job["deleted"]) == ("done", 1)
            assert job["batches"] >= 1 and job["finished_at"] is not None
            stats = (await admin.get("/admin/session-stats", headers=ADMIN)).json()
        assert (stats["active_sessions"], stats["expired_waiting"]) == (1, 0)
        assert stats["total_ingredients"] == 1
        assert (await old.get("/fridge")).json()["ingredients"] == []
        assert names((await recent.get("/fridge")).json()) == ["butter"]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {ADMIN_TOKEN}"}],
    ids=["none", "wrong-token", "not-bearer"],
)
async def test_the_admin_endpoints_refuse_a_client_without_the_token(
    fridge: Fridge, headers: dict[str, str]
) -> None:
    async with fridge.client() as client:
        await client.post("/fridge/ingredients", json={"ingredient_ids": [MILK]})
    fridge.clock.now += timedelta(days=2)  # that session has expired: a sweep would delete it
    async with serve(fridge.app) as url, httpx.AsyncClient(base_url=url) as outsider:
        for method, path in [
            ("GET", "/admin/session-stats"),
            ("POST", "/admin/cleanup-sessions"),
            ("GET", "/admin/cleanup-sessions/0"),
        ]:
            refused = await outsider.request(method, path, headers=headers)
            assert refused.status_code == 401, (method, path)
            assert refused.headers["www-authenticate"] == "Bearer"
            assert "active_sessions" not in refused.text
        stats = (await outsider.get("/admin/session-stats", headers=ADMIN)).json()
    assert stats["expired_waiting"] == 1  # no sweep ran


async def test_without_a_configured_token_the_admin_endpoints_are_off(
    make_db: MakeDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FRIDGE_ADMIN_TOKEN", raising=False)
    db = await make_db(FridgeBase.metadata)
    off = create_app(db, sweep_every=timedelta(hours=1))
    monkeypatch.setenv("FRIDGE_ADMIN_TOKEN", "from-the-environment")
    on = create_app(db, sweep_every=timedelta(hours=1))
    async with serve(off) as url, httpx.AsyncClient(base_url=url) as client:
        for headers in ({}, {"Authorization": "Bearer anything"}):
            refused = await client.get("/admin/session-stats", headers=headers)
            assert refused.status_code == 403
            assert "FRIDGE_ADMIN_TOKEN" in refused.json()["detail"]
    auth = {"Authorization": "Bearer from-the-environment"}
    async with (
        on.router.lifespan_context(on),
        serve(on) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        assert (await client.get("/admin/session-stats", headers=auth)).status_code == 200


async def test_cleanup_runs_in_the_background_in_batches_and_one_at_a_time(
    fridge: Fridge,
) -> None:
    async with fridge.client() as client:
        for _ in range(5):
            client.cookies.clear()
            await client.post("/fridge/ingredients", json={"ingredient_ids": [MILK]})
    fridge.clock.now += timedelta(days=2)
    async with serve(fridge.app) as url, httpx.AsyncClient(base_url=url) as admin:
        first, second = await asyncio.gather(
            admin.post("/admin/cleanup-sessions", headers=ADMIN),
            admin.post("/admin/cleanup-sessions", headers=ADMIN),
        )
        assert first.json()["job"]["id"] == second.json()["job"]["id"]  # one sweep, not two
        job = first.json()["job"]
        async with asyncio.timeout(10):
            while job["status"] == "running":
                await asyncio.sleep(0.01)
                job = (await admin.get(job["status_url"], headers=ADMIN)).json()
        assert (job["status"], job["deleted"]) == ("done", 5)
        assert (await admin.get("/admin/cleanup-sessions/nope", headers=ADMIN)).status_code == 404
        again = await _cleanup_finished(admin)
        assert again["id"] != job["id"] and again["deleted"] == 0
    assert await fridge.rows() == 0


async def test_showing_the_fridge_is_three_selects(fridge: Fridge) -> None:
    """The session, its fridge rows and their ingredients: one fast-path SELECT each."""
    async with fridge.client() as client:
        await client.post("/fridge/ingredients", json={"ingredient_ids": [MILK, EGGS]})
        with count_queries(fridge.db) as counter:
            shown = await client.get("/fridge")
        assert names(shown.json()) == ["milk", "eggs"]
    assert [s.split()[0].upper() for s in counter.statements] == ["SELECT"] * 3


@pytest.fixture
async def served(fridge: Fridge) -> AsyncIterator[str]:
    """The fridge app under uvicorn on a real loopback socket; its base URL."""
    async with serve(fridge.app) as url:
        yield url


async def test_the_session_cookie_over_a_real_socket(fridge: Fridge, served: str) -> None:
    """A visitor's whole life over TCP, with httpx's cookie jar doing what a browser does."""
    async with httpx.AsyncClient(base_url=served) as client:
        added = await client.post("/fridge/ingredients", json={"ingredient_ids": [MILK, EGGS]})
        cookie = added.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
        first = client.cookies["session"]
        await client.post("/login", json={"user": "alice"})
        assert client.cookies["session"] != first
        shown = (await client.get("/fridge")).json()
        assert (shown["user"], names(shown)) == ("alice", ["milk", "eggs"])
        async with httpx.AsyncClient(base_url=served, cookies={"session": first}) as old:
            assert (await old.get("/fridge")).json() == {"user": None, "ingredients": []}
        await client.post("/logout")
        assert "session" not in client.cookies
    assert await fridge.rows() == 0
