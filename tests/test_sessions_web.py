"""The session cookie (``SessionMiddleware`` + ``Depends(current_session)``) through a real
FastAPI app, a real HTTP client with its cookie jar, and the store on SQLite, PostgreSQL
and MariaDB."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import MetaData, String, func, select
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from aegis_shared.database import DatabaseManager
from aegis_shared.models import NAMING_CONVENTION
from aegis_shared.sessions import (
    ServerSessionMixin,
    SessionChildMixin,
    SessionStore,
    is_session_id,
    session_key,
)
from aegis_shared.testing import count_queries
from aegis_shared.web import HttpSession, SessionMiddleware, current_session
from tests.conftest import MakeDb

SESSION = Depends(current_session)


class WebBase(AsyncAttrs, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class WebSession(ServerSessionMixin, WebBase):
    __tablename__ = "sw_sessions"


class WebNote(SessionChildMixin, WebBase):
    __tablename__ = "sw_notes"
    __session_model__ = WebSession

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(50))


class Clock:
    """The store's clock, moved by the tests."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


class Site:
    """One app on one database: its store, its clock and the gates a handler can wait at."""

    def __init__(self, db: DatabaseManager, **middleware: Any) -> None:
        # The tests talk plain http: the Secure default (which a cookie jar keeps off
        # http) is tested in test_sessions_security.py.
        middleware.setdefault("secure", False)
        self.db = db
        self.clock = Clock()
        self.store = SessionStore(
            db,
            WebSession,
            idle_timeout=timedelta(hours=1),
            absolute_timeout=timedelta(hours=8),
            touch_interval=timedelta(minutes=5),
            clock=self.clock,
        )
        self.loaded = asyncio.Event()
        self.proceed = asyncio.Event()
        self.app = _app(self, **middleware)

    def client(self, base_url: str = "http://localhost") -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=base_url)

    async def rows(self) -> list[WebSession]:
        async with self.db.session() as session:
            return list((await session.scalars(select(WebSession))).all())

    async def notes(self) -> int:
        async with self.db.session() as session:
            return int(await session.scalar(select(func.count()).select_from(WebNote)) or 0)


def _app(site: Site, **middleware: Any) -> FastAPI:
    app = FastAPI()
    app.add_middleware(SessionMiddleware, store=site.store, **middleware)
    Session = SESSION

    @app.get("/plain")
    async def plain() -> dict[str, str]:
        return {"ok": "no session used"}

    @app.get("/data")
    async def read(session: HttpSession = Session) -> dict[str, Any]:
        return {"id": session.id, "data": dict(session)}

    @app.post("/data")
    async def write(values: dict[str, Any], session: HttpSession = Session) -> dict[str, Any]:
        session.update(values)
        return {"data": dict(session)}

    @app.post("/notes")
    async def add_note(session: HttpSession = Session) -> dict[str, int]:
        key = await session.ensure()
        async with site.db.session() as db_session:
            db_session.add(WebNote(session_id=key, text="milk"))
        return {"notes": 1}

    @app.post("/login")
    async def login(session: HttpSession = Session) -> dict[str, Any]:
        session["user"] = "alice"
        await session.rotate()
        return {"data": dict(session)}

    @app.post("/logout")
    async def logout(session: HttpSession = Session) -> dict[str, str]:
        await session.invalidate()
        return {"ok": "logged out"}

    @app.post("/slow-write")
    async def slow_write(session: HttpSession = Session) -> dict[str, str]:
        site.loaded.set()
        await site.proceed.wait()
        session["late"] = True
        return {"ok": "written late"}

    return app


@pytest.fixture
async def site(make_db: MakeDb) -> Site:
    return Site(await make_db(WebBase.metadata))


def set_cookie(response: httpx.Response) -> str | None:
    values = response.headers.get_list("set-cookie")
    assert len(values) <= 1
    return values[0] if values else None


def attributes(header: str) -> dict[str, str]:
    parts = [part.strip() for part in header.split(";")]
    return {p.split("=", 1)[0].lower(): [*p.split("=", 1), ""][1] for p in parts[1:]}


def cookie_value(header: str) -> str:
    return header.split(";", 1)[0].split("=", 1)[1]


# -- creation, reading and the cookie ---------------------------------------------------------


async def test_a_request_that_does_not_use_the_session_costs_nothing(site: Site) -> None:
    async with site.client() as client:
        client.cookies.set("session", "x" * 43)
        with count_queries(site.db) as counter:
            response = await client.get("/plain")
    assert response.status_code == 200
    assert counter.count == 0
    assert set_cookie(response) is None


async def test_reading_without_a_session_creates_nothing(site: Site) -> None:
    async with site.client() as client:
        with count_queries(site.db) as counter:
            response = await client.get("/data")
    assert response.json() == {"id": None, "data": {}}
    assert set_cookie(response) is None
    assert counter.count == 0
    assert await site.rows() == []


async def test_the_first_write_creates_the_session_and_sets_a_safe_cookie(site: Site) -> None:
    async with site.client() as client:
        response = await client.post("/data", json={"cart": [1, 2]})
        header = set_cookie(response)
        assert header is not None
        assert header.startswith("session=")
        assert attributes(header) == {"path": "/", "httponly": "", "samesite": "Lax"}
        session_id = cookie_value(header)
        assert is_session_id(session_id)

        again = await client.get("/data")
    assert again.json() == {"id": session_id, "data": {"cart": [1, 2]}}
    assert set_cookie(again) is None  # nothing changed, so no cookie is sent again
    (row,) = await site.rows()
    assert row.session_id == session_key(session_id)  # only the digest is stored
    assert session_id not in repr(row.data)


async def test_secure_names_the_cookie_with_the_host_prefix(make_db: MakeDb) -> None:
    site = Site(await make_db(WebBase.metadata), secure=True, same_site="strict")
    async with site.client("https://localhost") as client:
        response = await client.post("/data", json={"a": 1})
        header = set_cookie(response)
        assert header is not None and header.startswith("__Host-session=")
        assert attributes(header) == {
            "path": "/",
            "httponly": "",
            "samesite": "Strict",
            "secure": "",
        }
        assert "domain" not in attributes(header)
        assert (await client.get("/data")).json()["data"] == {"a": 1}


@pytest.mark.parametrize(
    "options",
    [
        {"same_site": "none"},
        {"cookie_name": ""},
        {"cookie_name": "__Host-session"},
        {"host_prefix": True, "secure": False},
    ],
    ids=repr,
)
def test_bad_middleware_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"same_site|cookie_name|host_prefix=True needs"):
        SessionMiddleware(FastAPI(), store=object.__new__(SessionStore), **options)


def test_the_middleware_needs_a_store() -> None:
    with pytest.raises(TypeError, match="needs a SessionStore"):
        SessionMiddleware(FastAPI(), store=object())  # type: ignore[arg-type]


async def test_current_session_without_the_middleware_says_what_to_add() -> None:
    app = FastAPI()

    @app.get("/")
    async def handler(session: HttpSession = SESSION) -> None:
        return None

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        with pytest.raises(RuntimeError, match=r"add app\.add_middleware\(SessionMiddleware"):
            await client.get("/")


# -- cookies the server did not issue ---------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["", "short", "x" * 42, "x" * 44, "a" * 42 + "!", "ä" * 43, "a" * 4000],
    ids=["empty", "short", "42", "44", "punctuation", "non-ascii", "huge"],
)
async def test_a_malformed_cookie_costs_no_query_and_is_cleared(site: Site, value: str) -> None:
    async with site.client() as client:
        with count_queries(site.db) as counter:
            cookie = f"session={value}".encode()
            response = await client.get("/data", headers={"cookie": cookie})
    assert response.json() == {"id": None, "data": {}}
    assert counter.count == 0
    header = set_cookie(response)
    assert header is not None and attributes(header)["max-age"] == "0"


async def test_an_id_the_server_never_issued_is_never_adopted(site: Site) -> None:
    forged = "A" * 43
    async with site.client() as client:
        client.cookies.set("session", forged)
        response = await client.post("/data", json={"a": 1})
    header = set_cookie(response)
    assert header is not None
    assert cookie_value(header) not in (forged, "")
    (row,) = await site.rows()
    assert row.session_id != session_key(forged)
    assert row.session_id == session_key(cookie_value(header))


# -- expiry, sliding, rotation and logout -----------------------------------------------------


async def test_idle_and_absolute_expiry_are_enforced_and_the_cookie_cleared(site: Site) -> None:
    async with site.client() as client:
        await client.post("/data", json={"a": 1})
        # Used every 50 minutes: the idle timeout (1 h) keeps sliding...
        for _ in range(9):
            site.clock.now += timedelta(minutes=50)
            if site.clock.now - datetime(2026, 1, 1, tzinfo=UTC) >= timedelta(hours=8):
                break
            assert (await client.get("/data")).json()["data"] == {"a": 1}
        # ...but not past the absolute lifetime (8 h).
        site.clock.now = datetime(2026, 1, 1, 8, 0, 1, tzinfo=UTC)
        expired = await client.get("/data")
        assert expired.json() == {"id": None, "data": {}}
        header = set_cookie(expired)
        assert header is not None and attributes(header)["max-age"] == "0"

        await client.post("/data", json={"b": 2})
        site.clock.now += timedelta(hours=1, seconds=1)  # idle for longer than 1 h
        assert (await client.get("/data")).json() == {"id": None, "data": {}}


async def test_login_rotates_the_id_and_kills_the_old_one(site: Site) -> None:
    async with site.client() as client:
        first = await client.post("/data", json={"cart": [1]})
        old_header = set_cookie(first)
        assert old_header is not None
        old_id = cookie_value(old_header)
        await client.post("/notes")
        login = await client.post("/login")
        new_header = set_cookie(login)
        assert new_header is not None
        new_id = cookie_value(new_header)
        assert new_id != old_id and is_session_id(new_id)
        after = await client.get("/data")
    assert after.json() == {"id": new_id, "data": {"cart": [1], "user": "alice"}}
    assert await site.notes() == 1  # child rows moved with the session
    async with site.client() as attacker:
        attacker.cookies.set("session", old_id)
        assert (await attacker.get("/data")).json() == {"id": None, "data": {}}
    assert [row.session_id for row in await site.rows()] == [session_key(new_id)]


async def test_logout_deletes_on_the_server_and_clears_the_cookie(site: Site) -> None:
    async with site.client() as client:
        created = await client.post("/data", json={"a": 1})
        header = set_cookie(created)
        assert header is not None
        old_id = cookie_value(header)
        await client.post("/notes")
        logout = await client.post("/logout")
        cleared = set_cookie(logout)
        assert cleared is not None and cookie_value(cleared) in ("", '""')
        assert attributes(cleared)["max-age"] == "0"
        assert (await client.get("/data")).json() == {"id": None, "data": {}}
    assert await site.rows() == []
    assert await site.notes() == 0  # cascade
    async with site.client() as replay:
        replay.cookies.set("session", old_id)
        assert (await replay.get("/data")).json() == {"id": None, "data": {}}


@pytest.mark.parametrize("action", ["/logout", "/login"])
async def test_a_request_finishing_after_logout_or_rotation_does_not_revive_the_session(
    site: Site, action: str
) -> None:
    async with site.client() as client:
        created = await client.post("/data", json={"a": 1})
        header = set_cookie(created)
        assert header is not None
        old_id = cookie_value(header)
        slow = asyncio.create_task(client.post("/slow-write"))
        await site.loaded.wait()  # the slow request has read the session...
        await client.post(action)  # ...and now it is logged out or rotated
        site.proceed.set()
        late = await slow
    assert late.status_code == 200
    assert set_cookie(late) is None  # nothing to give the client
    keys = [row.session_id for row in await site.rows()]
    assert session_key(old_id) not in keys
    for row in await site.rows():
        assert "late" not in row.data


async def test_writes_within_the_touch_interval_cost_one_select(site: Site) -> None:
    async with site.client() as client:
        await client.post("/data", json={"a": 1})
        site.clock.now += timedelta(minutes=1)
        with count_queries(site.db) as counter:
            await client.get("/data")
        assert [s.split()[0].upper() for s in counter.statements] == ["SELECT"]
        site.clock.now += timedelta(minutes=10)
        with count_queries(site.db) as counter:
            await client.get("/data")
        assert [s.split()[0].upper() for s in counter.statements] == ["SELECT", "UPDATE"]
