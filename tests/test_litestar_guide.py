"""docs/guide.md's "Litestar" section run as written: its blocks, joined, are the module of
an app (the seed's ``Token``, ``User``, ``Context``, providers and ``Base`` given, as the
guide says), served by uvicorn on loopback on SQLite and PostgreSQL with DATABASE_URL and
SESSION_COOKIE_SECURE from the environment, as a reader would run it."""

from __future__ import annotations

import asyncio
import sys
import types
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import MetaData
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase

from aegis_shared.events import event_metadata, publish
from aegis_shared.models import NAMING_CONVENTION
from tests import seed004
from tests.conftest import MakeDb
from tests.http import serve
from tests.markdown import python_blocks
from tests.models import Base, UserAccessLog
from tests.models import User as AppUser
from tests.test_events_sse import TIMEOUT, read_messages, until
from tests.test_litestar import strict_litestar

pytestmark = [
    pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True),
    strict_litestar,
]

MODULE = "guide_litestar_app"


@pytest.fixture
def guide(db_url: URL, monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """The section's blocks as one module (Litestar resolves a handler's annotations in its
    module, so it is registered in ``sys.modules`` while the test runs)."""
    monkeypatch.setenv("DATABASE_URL", db_url.render_as_string(hide_password=False))
    monkeypatch.setenv("SESSION_COOKIE_SECURE", "false")  # the test talks plain http

    class GuideBase(AsyncAttrs, DeclarativeBase):  # the reader's Base, fresh for each run
        metadata = MetaData(naming_convention=NAMING_CONVENTION)

    module = types.ModuleType(MODULE)
    module.__dict__.update(
        Token=seed004.Token,
        User=AppUser,
        Context=Any,
        Base=GuideBase,
        provide_users_service=seed004.provide_users_service,
        provide_roles_service=seed004.provide_roles_service,
        provide_email_verification_service=seed004.provide_email_verification_service,
        provide_password_reset_service=seed004.provide_password_reset_service,
        provide_refresh_token_service=seed004.provide_refresh_token_service,
    )
    source = "".join(python_blocks("docs/guide.md", "Litestar"))
    sys.modules[MODULE] = module
    try:
        exec(compile(source, "docs/guide.md (Litestar)", "exec"), module.__dict__)
        yield module
    finally:
        del sys.modules[MODULE]


@pytest.fixture
async def client(guide: types.ModuleType, make_db: MakeDb) -> AsyncIterator[httpx.AsyncClient]:
    await make_db(Base.metadata, guide.Base.metadata, event_metadata, default=False)
    async with (
        serve(guide.app, lifespan="on") as base,
        httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http,
    ):
        yield http
    assert guide.db.closed  # the plugin closed the guide's manager on shutdown


async def test_guard_handlers_and_job_as_the_guide_has_them(
    guide: types.ModuleType, client: httpx.AsyncClient
) -> None:
    created = await client.post("/users", json={"email": "ada@example.com", "name": "Ada"})
    assert created.status_code == 201
    assert created.json()["one_session"] is True
    assert (await client.get("/me")).status_code == 401
    stranger = await client.get("/me", headers={"Authorization": "Bearer eve@example.com"})
    assert stranger.status_code == 401

    me = await client.get("/me", headers={"Authorization": "Bearer ada@example.com"})
    assert me.status_code == 200
    assert me.json() == {"email": "ada@example.com"}

    async with guide.db.session() as session:
        for path in ("/verify", "/reset", "/refresh", "/refresh", "/x"):
            session.add(UserAccessLog(user_id=1, path=path))
    assert await guide.cleanup_auth_tokens(None) == {"verification": 1, "reset": 1, "refresh": 2}
    assert guide.db.pool_status()["main"]["checked_out"] == 0


async def test_login_rotates_and_logout_clears_as_the_guide_has_them(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/users", json={"email": "ada@example.com", "name": "Ada"})
    unknown = await client.post("/login", json={"email": "eve@example.com"})
    assert unknown.status_code == 401
    assert "session" not in client.cookies

    logged_in = await client.post("/login", json={"email": "ada@example.com"})
    assert logged_in.status_code == 201
    assert "session" in client.cookies
    cross = await client.post("/logout", headers={"Sec-Fetch-Site": "cross-site"})
    assert cross.status_code == 403  # the CSRF check came with the sessions
    out = await client.post("/logout")
    assert out.status_code == 201
    assert "session" not in client.cookies


async def test_events_resume_as_the_guide_has_them(
    guide: types.ModuleType, client: httpx.AsyncClient
) -> None:
    await client.post("/users", json={"email": "ada@example.com", "name": "Ada"})
    auth = {"Authorization": "Bearer ada@example.com"}
    hub = guide.app.state.hub
    async with client.stream("GET", "/fridges/7/events", headers=auth) as response:
        assert response.status_code == 200
        await until(lambda: "fridge:7" in hub._channels)
        await hub._channels["fridge:7"].ready()
        await asyncio.sleep(0.05)
        async with guide.db.session() as session:
            await publish(session, "fridge:7", {"added": "milk"})
            await publish(session, "fridge:7", {"added": "eggs"})
        first = await read_messages(response.aiter_lines(), 2)
    assert first == [(1, {"added": "milk"}), (2, {"added": "eggs"})]

    async with guide.db.session() as session:
        await publish(session, "fridge:7", {"added": "tea"})
    headers = {**auth, "Last-Event-ID": "1"}
    async with client.stream("GET", "/fridges/7/events", headers=headers) as response:
        resumed = await read_messages(response.aiter_lines(), 2)
    assert resumed == [(2, {"added": "eggs"}), (3, {"added": "tea"})]
    bad = await client.get("/fridges/7/events", headers={**auth, "Last-Event-ID": "x"})
    assert bad.status_code == 400
