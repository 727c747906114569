"""Server-side sessions and the CSRF check on Litestar (``AegisPlugin(sessions=store)``),
under uvicorn on loopback with a real cookie jar, on SQLite and PostgreSQL: a session made
on the first write, its id hashed in the table, rotation on login, logout, idle expiry,
the throttled touch, expired sessions swept in batches during the app's lifespan, nothing
saved for a failed request, the cookie's defaults, and unsafe requests refused with 403
for a cross-site origin or a missing or bad token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from litestar import Litestar, Request, get, post
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException
from litestar.params import JSONBody
from sqlalchemy import MetaData, select
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase

from aegis_shared.database import DatabaseManager
from aegis_shared.litestar import AegisPlugin, SessionOptions, csrf_middleware, csrf_token
from aegis_shared.models import NAMING_CONVENTION
from aegis_shared.sessions import (
    ServerSessionMixin,
    SessionStore,
    is_session_id,
    session_key,
    sweep_sessions,
)
from aegis_shared.web import CSRFTokens, HttpSession
from tests.conftest import MakeDb
from tests.http import serve
from tests.test_litestar import strict_litestar
from tests.test_sessions_web import Clock
from tests.waiting import until

pytestmark = [
    pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True),
    strict_litestar,
]

SECRET = "litestar-sessions-test-secret-" + "x" * 32


class LiteSessionBase(AsyncAttrs, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class LiteSession(ServerSessionMixin, LiteSessionBase):
    __tablename__ = "ls_sessions"


@get("/whoami")
async def whoami(http_session: NamedDependency[HttpSession]) -> dict[str, Any]:
    return {"user": http_session.get("user"), "cart": http_session.get("cart", [])}


@post("/cart")
async def add_to_cart(
    data: JSONBody[dict[str, str]], http_session: NamedDependency[HttpSession]
) -> dict[str, Any]:
    http_session["cart"] = [*http_session.get("cart", []), data["item"]]
    return {"cart": http_session["cart"]}


@post("/login")
async def login(
    data: JSONBody[dict[str, str]], http_session: NamedDependency[HttpSession]
) -> dict[str, str]:
    if data.get("password") != "right":
        http_session["user"] = data["user"]  # dropped: the answer is an error
        raise HTTPException(status_code=401, detail="Wrong user or password")
    http_session["user"] = data["user"]
    if not await http_session.rotate():
        raise HTTPException(status_code=409, detail="The session ended meanwhile; log in again.")
    return {"user": data["user"]}


@post("/logout")
async def logout(http_session: NamedDependency[HttpSession]) -> None:
    await http_session.invalidate()


@get("/form")
async def form(request: Request[Any, Any, Any]) -> dict[str, str]:
    return {"csrf_token": csrf_token(request)}


@asynccontextmanager
async def site(
    db: DatabaseManager, clock: Clock, *, sweep: dict[str, Any] | None = None, **options: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, SessionStore]]:
    """The test app with its session store; ``sweep=`` runs ``sweep_sessions(store, **sweep)``
    in the app's lifespan, as the guide has it."""
    store = SessionStore(
        db,
        LiteSession,
        idle_timeout=timedelta(hours=1),
        absolute_timeout=timedelta(hours=8),
        touch_interval=timedelta(minutes=5),
        clock=clock,
    )
    options.setdefault("secure", False)  # plain http here; the Secure default has its own test
    app = Litestar(
        route_handlers=[whoami, add_to_cart, login, logout, form],
        plugins=[
            AegisPlugin(
                db,
                close_on_shutdown=False,
                sessions=store,
                session_options=SessionOptions(**options),
            )
        ],
        lifespan=[] if sweep is None else [lambda _app: sweep_sessions(store, **sweep)],
        logging_config=None,
    )
    async with serve(app, lifespan="on") as base, httpx.AsyncClient(base_url=base) as client:
        yield client, store


async def stored_keys(db: DatabaseManager) -> list[str]:
    async with db.session() as session:
        return list((await session.scalars(select(LiteSession.session_id))).all())


async def last_accessed(db: DatabaseManager) -> datetime:
    async with db.session() as session:
        value = await session.scalar(select(LiteSession.last_accessed))
    assert value is not None
    return value


async def test_session_lifecycle_create_rotate_logout(make_db: MakeDb) -> None:
    db = await make_db(LiteSessionBase.metadata)
    async with site(db, Clock()) as (client, _):
        anonymous = await client.get("/whoami")
        assert anonymous.json() == {"user": None, "cart": []}
        assert "set-cookie" not in anonymous.headers  # no session until the first write
        assert await stored_keys(db) == []

        added = await client.post("/cart", json={"item": "milk"})
        assert added.status_code == 201
        first = client.cookies["session"]
        assert is_session_id(first)
        # The table holds the id's SHA-256 digest only.
        assert await stored_keys(db) == [session_key(first)]

        failed = await client.post("/login", json={"user": "ada", "password": "wrong"})
        assert failed.status_code == 401
        assert (await client.get("/whoami")).json() == {"user": None, "cart": ["milk"]}

        logged_in = await client.post("/login", json={"user": "ada", "password": "right"})
        assert logged_in.status_code == 201
        second = client.cookies["session"]
        assert second != first  # rotated on login, data kept
        assert (await client.get("/whoami")).json() == {"user": "ada", "cart": ["milk"]}
        assert await stored_keys(db) == [session_key(second)]

        # The old id stopped working at once: its holder (another client) has no
        # session, and its cookie is cleared.
        async with httpx.AsyncClient(base_url=client.base_url) as old:
            stale = await old.get("/whoami", headers={"Cookie": f"session={first}"})
        assert stale.json() == {"user": None, "cart": []}
        assert "Max-Age=0" in stale.headers["set-cookie"]

        out = await client.post("/logout")
        assert out.status_code == 201
        assert "Max-Age=0" in out.headers["set-cookie"]
        assert "session" not in client.cookies
        assert await stored_keys(db) == []
    assert db.pool_status()["main"]["checked_out"] == 0


async def test_idle_expiry_and_the_throttled_touch(make_db: MakeDb) -> None:
    db = await make_db(LiteSessionBase.metadata)
    clock = Clock()
    async with site(db, clock) as (client, _):
        await client.post("/cart", json={"item": "eggs"})
        created = await last_accessed(db)

        clock.now += timedelta(minutes=2)
        assert (await client.get("/whoami")).json()["cart"] == ["eggs"]
        assert await last_accessed(db) == created  # within touch_interval: no write

        clock.now += timedelta(minutes=4)
        assert (await client.get("/whoami")).json()["cart"] == ["eggs"]
        assert await last_accessed(db) > created  # touched once the interval passed

        clock.now += timedelta(hours=1, minutes=1)  # idle past idle_timeout
        expired = await client.get("/whoami")
        assert expired.json() == {"user": None, "cart": []}
        assert "Max-Age=0" in expired.headers["set-cookie"]


async def test_expired_sessions_are_swept_in_batches_during_the_apps_lifespan(
    make_db: MakeDb,
) -> None:
    db = await make_db(LiteSessionBase.metadata)
    clock = Clock()
    sweep = {"every": timedelta(milliseconds=50), "jitter": timedelta(0), "batch_size": 2}
    async with site(db, clock, sweep=sweep) as (client, _):
        base = str(client.base_url)
        for n in range(5):  # five visitors, each with its own session, go idle
            async with httpx.AsyncClient(base_url=base) as visitor:
                assert (await visitor.post("/cart", json={"item": f"item-{n}"})).is_success
        assert len(await stored_keys(db)) == 5
        clock.now += timedelta(hours=1, minutes=1)  # past idle_timeout
        assert (await client.post("/cart", json={"item": "eggs"})).is_success  # one alive

        async def only_the_live_one_left() -> bool:
            return len(await stored_keys(db)) == 1

        await until(only_the_live_one_left)
        assert (await client.get("/whoami")).json()["cart"] == ["eggs"]


async def test_cookie_defaults_are_host_prefixed_secure_httponly_lax(make_db: MakeDb) -> None:
    db = await make_db(LiteSessionBase.metadata)
    async with site(db, Clock(), secure=True) as (client, _):
        response = await client.post("/cart", json={"item": "tea"})
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("__Host-session=")
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert attributes == {"httponly", "path", "samesite", "secure"}
    assert "SameSite=Lax" in cookie
    assert "Path=/" in cookie
    assert response.headers["cache-control"] == "no-store"


async def test_csrf_refuses_cross_site_and_missing_or_bad_tokens(make_db: MakeDb) -> None:
    db = await make_db(LiteSessionBase.metadata)
    tokens = CSRFTokens(SECRET, secure=False)
    async with site(db, Clock(), csrf_tokens=tokens) as (client, _):
        cross = await client.post(
            "/cart",
            json={"item": "x"},
            headers={"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
        )
        assert cross.status_code == 403
        assert cross.json()["error"] == "csrf"
        assert "evil" not in cross.text

        missing = await client.post("/cart", json={"item": "x"})
        assert missing.status_code == 403
        assert missing.json()["error"] == "csrf"

        token = (await client.get("/form")).json()["csrf_token"]
        bad = await client.post("/cart", json={"item": "x"}, headers={"X-CSRF-Token": "0" + token})
        assert bad.status_code == 403
        assert await stored_keys(db) == []  # nothing refused got as far as a session

        good = await client.post("/cart", json={"item": "x"}, headers={"X-CSRF-Token": token})
        assert good.status_code == 201
        same_origin = await client.post(
            "/cart",
            json={"item": "y"},
            headers={"X-CSRF-Token": token, "Sec-Fetch-Site": "same-origin"},
        )
        assert same_origin.json() == {"cart": ["x", "y"]}
        assert len(await stored_keys(db)) == 1


async def test_csrf_check_without_tokens_passes_same_origin_and_plain_clients(
    make_db: MakeDb,
) -> None:
    db = await make_db(LiteSessionBase.metadata)
    async with site(db, Clock()) as (client, _):
        plain = await client.post("/cart", json={"item": "a"})
        assert plain.status_code == 201
        same = await client.post(
            "/cart", json={"item": "b"}, headers={"Sec-Fetch-Site": "same-origin"}
        )
        assert same.status_code == 201
        other = await client.post(
            "/cart", json={"item": "c"}, headers={"Origin": "https://elsewhere.example"}
        )
        assert other.status_code == 403
        assert (await client.get("/whoami")).json()["cart"] == ["a", "b"]


@post("/notes")
async def add_note(data: JSONBody[dict[str, str]]) -> dict[str, str]:
    return data


async def test_csrf_middleware_alone_has_the_same_defaults(make_db: MakeDb) -> None:
    db = await make_db(LiteSessionBase.metadata)
    app = Litestar(
        route_handlers=[add_note],
        middleware=[csrf_middleware(trusted_origins=["https://admin.example.com"])],
        plugins=[AegisPlugin(db, close_on_shutdown=False)],
        logging_config=None,
    )
    async with serve(app, lifespan="on") as base, httpx.AsyncClient(base_url=base) as client:
        plain = await client.post("/notes", json={"n": "1"})
        cross = await client.post(
            "/notes", json={"n": "2"}, headers={"Sec-Fetch-Site": "cross-site"}
        )
        null = await client.post("/notes", json={"n": "3"}, headers={"Origin": "null"})
        trusted = await client.post(
            "/notes",
            json={"n": "4"},
            headers={"Sec-Fetch-Site": "same-site", "Origin": "https://admin.example.com"},
        )
        read = await client.get("/whoami", headers={"Sec-Fetch-Site": "cross-site"})
    assert plain.status_code == 201
    assert (cross.status_code, cross.json()["error"]) == (403, "csrf")
    assert null.status_code == 403
    assert trusted.status_code == 201
    assert read.status_code == 404  # a safe method is never refused (no such route here)
