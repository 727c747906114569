"""The session cookie against the attacks and accidents of OWASP's Session Management cheat
sheet (issue 10): the app under a real uvicorn server, a real httpx client and its cookie
jar (or a raw Cookie header, for what a jar would never send), the store on SQLite,
PostgreSQL and MariaDB, and a FaultProxy for outages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException, Response
from sqlalchemy import MetaData, String, func, select
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from aegis_demo.fridge.app import create_app
from aegis_demo.fridge.models import FridgeBase
from aegis_shared.config import Settings
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
from aegis_shared.web import HttpSession, SessionMiddleware, current_session, install_error_handlers
from tests.conftest import MakeDb
from tests.faults import fault_proxy
from tests.http import serve

SESSION = Depends(current_session)
NETWORK = pytest.mark.parametrize("backend", ["postgresql", "mariadb"], indirect=True)
START = datetime(2026, 1, 1, tzinfo=UTC)


class SecBase(AsyncAttrs, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class SecSession(ServerSessionMixin, SecBase):
    __tablename__ = "ss_sessions"


class SecNote(SessionChildMixin, SecBase):
    __tablename__ = "ss_notes"
    __session_model__ = SecSession

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(50))


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


class Site:
    """One app served on loopback, its store on ``db``, and gates a handler waits at."""

    def __init__(
        self, db: DatabaseManager, *, store_db: DatabaseManager | None = None, **options: Any
    ) -> None:
        self.db = db
        self.clock = Clock()
        self.store = SessionStore(
            store_db or db,
            SecSession,
            idle_timeout=timedelta(hours=1),
            absolute_timeout=timedelta(hours=8),
            touch_interval=timedelta(minutes=5),
            clock=self.clock,
        )
        self.loaded = asyncio.Event()
        self.proceed = asyncio.Event()
        self.waiting = 0
        self.all_waiting = asyncio.Event()
        self.expect_waiting = 1
        self.app = _app(self, **options)
        self.url = ""

    @asynccontextmanager
    async def served(self) -> AsyncIterator[httpx.AsyncClient]:
        async with serve(self.app) as url:
            self.url = url
            async with httpx.AsyncClient(base_url=url) as client:
                yield client

    def other_client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, **kwargs)

    async def rows(self) -> list[SecSession]:
        async with self.db.session() as session:
            return list((await session.scalars(select(SecSession))).all())

    async def notes(self) -> int:
        async with self.db.session() as session:
            return int(await session.scalar(select(func.count()).select_from(SecNote)) or 0)


def _app(site: Site, **options: Any) -> FastAPI:
    app = FastAPI()
    app.add_middleware(SessionMiddleware, store=site.store, **options)
    install_error_handlers(app)

    @app.get("/plain")
    async def plain() -> dict[str, str]:
        return {"ok": "no session used"}

    @app.get("/data")
    async def read(response: Response, session: HttpSession = SESSION) -> dict[str, Any]:
        response.headers["cache-control"] = "max-age=60"
        return {"id": session.id, "data": dict(session)}

    @app.post("/data")
    async def write(
        values: dict[str, Any], response: Response, session: HttpSession = SESSION
    ) -> dict[str, Any]:
        response.headers["cache-control"] = "public, max-age=600"
        response.headers["vary"] = "Accept-Encoding"
        session.update(values)
        return {"data": dict(session)}

    @app.post("/data-then-401")
    async def write_then_refuse(values: dict[str, Any], session: HttpSession = SESSION) -> None:
        session.update(values)
        raise HTTPException(401, "not allowed")

    @app.post("/attempt")
    async def failed_attempt(session: HttpSession = SESSION) -> None:
        session["attempts"] = session.get("attempts", 0) + 1
        session.save_on_error()
        raise HTTPException(401, "wrong password")

    @app.post("/notes-then-{failure}")
    async def note_then_fail(failure: str, session: HttpSession = SESSION) -> None:
        key = await session.ensure()
        async with site.db.session() as db_session:
            db_session.add(SecNote(session_id=key, text="milk"))
        if failure == "409":
            raise HTTPException(409, "conflict")
        raise ZeroDivisionError("a bug in the handler")

    @app.post("/login")
    async def login(session: HttpSession = SESSION) -> dict[str, Any]:
        site.waiting += 1
        if site.waiting >= site.expect_waiting:
            site.all_waiting.set()
        site.loaded.set()
        await site.proceed.wait()
        session["user"] = "alice"
        session["role"] = "admin"
        if not await session.rotate():
            assert session.ended
            with_data = True
            try:
                session["user"] = "alice"
            except RuntimeError:
                with_data = False
            raise HTTPException(409, f"session ended; usable={with_data}")
        return {"data": dict(session)}

    @app.post("/rotate-then-401")
    async def rotate_then_refuse(session: HttpSession = SESSION) -> None:
        session["user"] = "mallory"
        assert await session.rotate()
        raise HTTPException(401, "second factor missing")

    @app.post("/logout")
    async def logout(session: HttpSession = SESSION) -> dict[str, str]:
        await session.invalidate()
        return {"ok": "logged out"}

    return app


@pytest.fixture
async def site(make_db: MakeDb) -> Site:
    return Site(await make_db(SecBase.metadata), secure=False)


def set_cookies(response: httpx.Response) -> list[str]:
    return response.headers.get_list("set-cookie")


def attributes(header: str) -> dict[str, str]:
    parts = [part.strip() for part in header.split(";")]
    return {p.split("=", 1)[0].lower(): [*p.split("=", 1), ""][1] for p in parts[1:]}


def name_and_value(header: str) -> tuple[str, str]:
    name, value = header.split(";", 1)[0].split("=", 1)
    return name, value


async def start_session(client: httpx.AsyncClient, data: dict[str, Any]) -> str:
    response = await client.post("/data", json=data)
    assert response.status_code == 200
    (header,) = set_cookies(response)
    return name_and_value(header)[1]


# -- 4 and 5: Secure and __Host- by default -----------------------------------------------------


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "app.example.com"])
async def test_the_cookie_is_secure_and_host_prefixed_by_default_whatever_the_host(
    make_db: MakeDb, host: str
) -> None:
    site = Site(await make_db(SecBase.metadata))
    async with site.served() as client:
        response = await client.post("/data", json={"a": 1}, headers={"host": host})
        (header,) = set_cookies(response)
        name, session_id = name_and_value(header)
        assert name == "__Host-session" and is_session_id(session_id)
        assert attributes(header) == {
            "httponly": "",
            "path": "/",
            "samesite": "Lax",
            "secure": "",
        }
        # A browser sends it back over https; the server reads it under its prefixed name.
        back = await client.get("/data", headers={"cookie": f"__Host-session={session_id}"})
        assert back.json() == {"id": session_id, "data": {"a": 1}}
        plain = await client.get("/data", headers={"cookie": f"session={session_id}"})
        assert plain.json() == {"id": None, "data": {}}  # the unprefixed name is not read


async def test_secure_without_the_prefix_and_plain_http_opt_out(make_db: MakeDb) -> None:
    db = await make_db(SecBase.metadata)
    for options, name, secure in [
        ({"host_prefix": False}, "session", True),
        ({"secure": False}, "session", False),
        ({"secure": True, "cookie_name": "sid"}, "__Host-sid", True),
    ]:
        site = Site(db, **options)
        async with site.served() as client:
            (header,) = set_cookies(await client.post("/data", json={"a": 1}))
        assert name_and_value(header)[0] == name
        assert ("secure" in attributes(header)) is secure


def test_contradicting_cookie_options_are_refused_with_a_way_out() -> None:
    store = object.__new__(SessionStore)
    with pytest.raises(ValueError, match=r"host_prefix=True needs secure=True.*secure=False"):
        SessionMiddleware(FastAPI(), store=store, secure=False, host_prefix=True)
    with pytest.raises(TypeError, match="secure"):
        SessionMiddleware(FastAPI(), store=store, secure="no")  # type: ignore[arg-type]


def test_the_secure_setting_defaults_on_and_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SESSION_COOKIE_SECURE", raising=False)
    assert Settings().session_cookie_secure is True
    monkeypatch.setenv("SESSION_COOKIE_SECURE", "false")
    assert Settings().session_cookie_secure is False


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("env", "secure"), [(None, True), ("false", False)])
async def test_the_fridge_example_reads_the_secure_setting(
    make_db: MakeDb, monkeypatch: pytest.MonkeyPatch, env: str | None, secure: bool
) -> None:
    if env is None:
        monkeypatch.delenv("SESSION_COOKIE_SECURE", raising=False)
    else:
        monkeypatch.setenv("SESSION_COOKIE_SECURE", env)
    app = create_app(await make_db(FridgeBase.metadata), sweep_every=timedelta(hours=1))
    async with serve(app, lifespan="on") as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/login", json={"user": "alice"})
    assert response.status_code == 200
    (header,) = set_cookies(response)
    assert name_and_value(header)[0] == ("__Host-session" if secure else "session")
    assert ("secure" in attributes(header)) is secure


# -- 2: a rotation the store refuses ends the session -------------------------------------------


async def test_a_login_finishing_after_a_logout_gets_no_session(site: Site) -> None:
    async with site.served() as client:
        session_id = await start_session(client, {"cart": [1]})
        slow = asyncio.create_task(client.post("/login"))
        await site.loaded.wait()
        logout = await client.post("/logout")
        assert logout.status_code == 200
        site.proceed.set()
        late = await slow
        async with site.other_client(cookies={"session": session_id}) as replay:
            assert (await replay.get("/data")).json() == {"id": None, "data": {}}
    assert late.status_code == 409
    assert late.json()["detail"] == "session ended; usable=False"
    assert set_cookies(late) == []  # no fresh cookie carrying {user: alice, role: admin}
    assert await site.rows() == []


async def test_a_login_finishing_after_the_absolute_timeout_gets_no_session(site: Site) -> None:
    async with site.served() as client:
        session_id = await start_session(client, {"cart": [1]})
        # Used every 50 minutes, the session lives until its absolute limit (8 h).
        while site.clock.now + timedelta(minutes=50) < START + timedelta(hours=8):
            site.clock.now += timedelta(minutes=50)
            assert (await client.get("/data")).json()["data"] == {"cart": [1]}
        slow = asyncio.create_task(client.post("/login"))
        await site.loaded.wait()  # loaded while still alive...
        site.clock.now = START + timedelta(hours=8, seconds=2)  # ...rotating after the limit
        site.proceed.set()
        late = await slow
    assert late.status_code == 409
    assert set_cookies(late) == []
    (row,) = await site.rows()  # only the expired one, waiting for cleanup
    assert row.session_id == session_key(session_id)
    assert row.expires_at <= START + timedelta(hours=8)
    assert "user" not in row.data


async def test_fifty_concurrent_logins_from_one_session_make_one_live_session(
    site: Site,
) -> None:
    site.expect_waiting = 50
    async with site.served() as client:
        session_id = await start_session(client, {"cart": [1]})
        cookie = {"cookie": f"session={session_id}"}
        async with site.other_client(limits=httpx.Limits(max_connections=60)) as many:
            logins = [asyncio.create_task(many.post("/login", headers=cookie)) for _ in range(50)]
            await asyncio.wait_for(site.all_waiting.wait(), 30)  # all 50 hold the session
            site.proceed.set()
            responses = await asyncio.gather(*logins)
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] + [409] * 49
    (winner,) = [response for response in responses if response.status_code == 200]
    assert all(set_cookies(r) == [] for r in responses if r is not winner)
    (header,) = set_cookies(winner)
    new_id = name_and_value(header)[1]
    (row,) = await site.rows()
    assert row.session_id == session_key(new_id) != session_key(session_id)
    assert row.data == {"cart": [1], "user": "alice", "role": "admin"}


# -- 3: a failed load never logs the user out -----------------------------------------------------


@NETWORK
@pytest.mark.parametrize("fault", ["refuse", "stall"])
async def test_a_database_outage_while_loading_keeps_the_cookie_and_the_session(
    make_db: MakeDb, db_url: URL, fault: str
) -> None:
    db = await make_db(SecBase.metadata)
    async with fault_proxy(db_url) as proxy:
        through = DatabaseManager(
            proxy.url(db_url),
            pool_size=2,
            connect_timeout=1,
            command_timeout=1,
            pool_timeout=1,
        )
        try:
            site = Site(db, store_db=through, secure=False)
            async with site.served() as client:
                session_id = await start_session(client, {"cart": [1]})
                if fault == "refuse":
                    await proxy.refuse()
                    proxy.drop_all()
                else:
                    proxy.stall()
                failed = await client.get("/data")
                assert failed.status_code in (503, 504)
                assert set_cookies(failed) == []
                assert client.cookies["session"] == session_id
                assert session_id not in failed.text
                if fault == "refuse":
                    await proxy.start()  # the same port again
                else:
                    proxy.resume()
                after = await client.get("/data")
            assert after.status_code == 200
            assert after.json() == {"id": session_id, "data": {"cart": [1]}}
        finally:
            await through.close()
    (row,) = await site.rows()
    assert row.session_id == session_key(session_id)


# -- 5: several cookies of the name ---------------------------------------------------------------


async def test_the_first_live_value_of_several_wins_and_junk_never_clears_it(
    site: Site,
) -> None:
    forged = "A" * 43
    async with site.served() as client:
        live = await start_session(client, {"cart": [1]})
        for header, selects in [
            (f"session={live}; session=junk", 1),  # Starlette's parser would keep "junk"
            (f"session=junk; other=1; session={live}", 1),
            (f"session={forged}; session={live}; session=junk", 2),
            (f'session="{live}"', 1),
            ([("cookie", f"session={live}"), ("cookie", "session=junk")], 1),  # two headers
        ]:
            with count_queries(site.db) as counter:
                headers = header if isinstance(header, list) else {"cookie": header}
                response = await client.get("/data", headers=headers)
            assert response.json() == {"id": live, "data": {"cart": [1]}}, header
            assert set_cookies(response) == [], header
            assert counter.count == selects, header


async def test_a_client_cannot_make_a_request_cost_many_selects(site: Site) -> None:
    async with site.served() as client:
        live = await start_session(client, {"cart": [1]})
        forged = [letter * 43 for letter in "ABCDEFGHIJ"]
        header = "; ".join(f"session={value}" for value in [*forged, live])
        with count_queries(site.db) as counter:
            response = await client.get("/data", headers={"cookie": header})
        assert counter.count == 3
        assert response.json() == {"id": None, "data": {}}
        # The live value was never looked up, so the cookie is not cleared: planted junk
        # cannot log the user out.
        assert set_cookies(response) == []
        assert (await client.get("/data")).json()["data"] == {"cart": [1]}
        # Repeating one value costs one look-up, not one per copy.
        header = "; ".join([f"session={forged[0]}"] * 5 + [f"session={live}"])
        with count_queries(site.db) as counter:
            response = await client.get("/data", headers={"cookie": header})
        assert counter.count == 2
        assert response.json()["data"] == {"cart": [1]}


# -- 8: errors save nothing and create nothing -------------------------------------------------


async def test_a_change_followed_by_an_error_is_not_saved(site: Site) -> None:
    async with site.served() as client:
        session_id = await start_session(client, {"user": "bob"})
        refused = await client.post("/data-then-401", json={"user": "admin"})
        assert refused.status_code == 401
        assert set_cookies(refused) == []
        assert (await client.get("/data")).json() == {"id": session_id, "data": {"user": "bob"}}
    (row,) = await site.rows()
    assert row.data == {"user": "bob"}


async def test_an_anonymous_write_that_fails_creates_no_session(site: Site) -> None:
    async with site.served() as client:
        refused = await client.post("/data-then-401", json={"user": "admin"})
        assert refused.status_code == 401
        assert set_cookies(refused) == []
        assert not client.cookies
    assert await site.rows() == []


@pytest.mark.parametrize("failure", ["409", "crash"])
async def test_a_session_ensured_by_a_failing_request_is_removed(site: Site, failure: str) -> None:
    async with site.served() as client:
        failed = await client.post(f"/notes-then-{failure}")
        assert failed.status_code == (409 if failure == "409" else 500)
        assert set_cookies(failed) == []
        assert "milk" not in failed.text
    assert await site.rows() == []
    assert await site.notes() == 0  # the child row went with it (cascade)


async def test_a_rotation_followed_by_an_error_sends_the_new_id_without_the_changes(
    site: Site,
) -> None:
    async with site.served() as client:
        old_id = await start_session(client, {"cart": [1]})
        refused = await client.post("/rotate-then-401")
        assert refused.status_code == 401
        # The rotation happened in the database: the client needs the new id (the old
        # one is dead), but "user" was never saved.
        (header,) = set_cookies(refused)
        new_id = name_and_value(header)[1]
        assert is_session_id(new_id) and new_id != old_id
        assert refused.headers["cache-control"] == "no-store"
        assert (await client.get("/data")).json() == {"id": new_id, "data": {"cart": [1]}}
    (row,) = await site.rows()
    assert row.session_id == session_key(new_id)
    assert row.data == {"cart": [1]}


async def test_save_on_error_keeps_the_changes_of_a_failing_request(site: Site) -> None:
    async with site.served() as client:
        first = await client.post("/attempt")
        assert first.status_code == 401
        (header,) = set_cookies(first)  # this session is kept, so its cookie is sent
        session_id = name_and_value(header)[1]
        second = await client.post("/attempt")
        assert second.status_code == 401
        assert set_cookies(second) == []
        assert (await client.get("/data")).json() == {"id": session_id, "data": {"attempts": 2}}
    (row,) = await site.rows()
    assert row.data == {"attempts": 2}


async def test_a_stale_cookie_is_cleared_even_by_a_failing_request(site: Site) -> None:
    async with site.served() as client:
        await start_session(client, {"user": "bob"})
        site.clock.now += timedelta(hours=2)  # idle for longer than 1 h: expired
        refused = await client.post("/data-then-401", json={"user": "admin"})
        assert refused.status_code == 401
        (header,) = set_cookies(refused)
        assert attributes(header)["max-age"] == "0"
        assert not client.cookies
    (row,) = await site.rows()  # the expired one, left for cleanup; no new one
    assert row.data == {"user": "bob"}


# -- 8: caches -----------------------------------------------------------------------------------


async def test_responses_that_set_the_cookie_are_never_cached(site: Site) -> None:
    async with site.served() as client:
        created = await client.post("/data", json={"a": 1})
        assert set_cookies(created)
        # The handler's "public, max-age=600" would let a shared cache hand the id out.
        assert created.headers.get_list("cache-control") == ["no-store"]
        assert created.headers.get_list("vary") == ["Accept-Encoding, Cookie"]

        read = await client.get("/data")  # uses the session, sets no cookie
        assert set_cookies(read) == []
        assert read.headers["cache-control"] == "max-age=60"  # the handler's, kept
        assert read.headers.get_list("vary") == ["Cookie"]

        logout = await client.post("/logout")
        assert set_cookies(logout)
        assert logout.headers.get_list("cache-control") == ["no-store"]

        plain = await client.get("/plain")  # no session used: nothing added
        assert "vary" not in plain.headers and "cache-control" not in plain.headers


# -- 6: CSRF comes with the session middleware --------------------------------------------------


async def test_a_cross_origin_logout_is_refused_by_default(site: Site) -> None:
    async with site.served() as client:
        await start_session(client, {"user": "alice"})
        forged = await client.post("/logout", headers={"Origin": "https://evil.example"})
        assert forged.status_code == 403
        assert forged.json()["error"] == "csrf"
        assert set_cookies(forged) == []  # the cookie is left alone
        fetched = await client.post("/logout", headers={"Sec-Fetch-Site": "cross-site"})
        assert fetched.status_code == 403
        assert len(await site.rows()) == 1  # the session is still there
        same = await client.post("/logout", headers={"Origin": site.url})
        assert same.status_code == 200
    assert await site.rows() == []


async def test_a_client_sending_no_browser_headers_passes(site: Site) -> None:
    async with site.served() as client:
        await start_session(client, {"user": "alice"})
        assert (await client.post("/logout")).status_code == 200  # curl, a script
    assert await site.rows() == []


async def test_trusted_origins_pass_and_csrf_can_be_turned_off(make_db: MakeDb) -> None:
    db = await make_db(SecBase.metadata)
    trusting = Site(db, secure=False, trusted_origins=["https://admin.example"])
    async with trusting.served() as client:
        await start_session(client, {"user": "alice"})
        passed = await client.post("/logout", headers={"Origin": "https://admin.example"})
        assert passed.status_code == 200
    off = Site(db, secure=False, csrf=False)
    async with off.served() as client:
        await start_session(client, {"user": "bob"})
        passed = await client.post("/logout", headers={"Origin": "https://evil.example"})
        assert passed.status_code == 200
    assert await off.rows() == []


def test_csrf_options_without_csrf_are_refused(db: DatabaseManager) -> None:
    store = SessionStore(db, SecSession)
    with pytest.raises(ValueError, match="csrf=False"):
        SessionMiddleware(FastAPI(), store, csrf=False, trusted_origins=["https://a.example"])
    with pytest.raises(ValueError, match="scheme://host"):
        SessionMiddleware(FastAPI(), store, trusted_origins=["https://a.example/path"])


# -- 8: a session too large to keep ---------------------------------------------------------------


async def test_session_data_over_the_limit_is_a_413_and_nothing_is_kept(make_db: MakeDb) -> None:
    site = Site(await make_db(SecBase.metadata), secure=False)
    site.store.max_data_bytes = 1024
    async with site.served() as client:
        cookie = await start_session(client, {"user": "alice"})
        too_big = await client.post("/data", json={"blob": "x" * 5000})
        assert too_big.status_code == 413
        assert too_big.json()["error"] == "session_too_large"
        assert too_big.headers["vary"] == "Cookie"
        assert too_big.headers["cache-control"] == "no-store"
        assert "x" * 20 not in too_big.text
        assert set_cookies(too_big) == []
        assert (await client.get("/data")).json()["data"] == {"user": "alice"}
        async with site.other_client() as anonymous:
            refused = await anonymous.post("/data", json={"blob": "y" * 5000})
            assert refused.status_code == 413 and set_cookies(refused) == []
    rows = await site.rows()
    assert len(rows) == 1 and rows[0].data == {"user": "alice"}  # no row for the anonymous
    assert cookie


async def test_openapi_documents_the_csrf_and_session_size_refusals(make_db: MakeDb) -> None:
    db = await make_db(SecBase.metadata)
    ref = {"$ref": "#/components/schemas/DatabaseErrorBody"}
    async with Site(db, secure=False).served() as client:
        schema = (await client.get("/openapi.json")).json()
    logout = schema["paths"]["/logout"]["post"]["responses"]
    read = schema["paths"]["/data"]["get"]["responses"]
    assert logout["403"]["content"]["application/json"]["schema"] == ref
    assert logout["413"]["content"]["application/json"]["schema"] == ref
    assert "403" not in read and "413" in read  # a GET is never refused as cross-site
    codes = schema["components"]["schemas"]["DatabaseErrorBody"]["properties"]["error"]["enum"]
    assert {"csrf", "session_too_large", "invalid_input", "duplicate"} <= set(codes)
    async with Site(db, secure=False, csrf=False).served() as client:
        schema = (await client.get("/openapi.json")).json()
    assert "403" not in schema["paths"]["/logout"]["post"]["responses"]
