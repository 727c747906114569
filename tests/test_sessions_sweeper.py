"""The background session sweeper, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase

from aegis_shared.database import DatabaseManager
from aegis_shared.models import NAMING_CONVENTION
from aegis_shared.sessions import (
    ServerSessionMixin,
    SessionStore,
    SessionSweeper,
    sweep_sessions,
)
from tests.conftest import MakeDb


class Base(AsyncAttrs, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class SweptSession(ServerSessionMixin, Base):
    __tablename__ = "sweep_sessions"


FAST = {"every": timedelta(milliseconds=5), "jitter": timedelta(milliseconds=5)}


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


async def _store_with_expired(db: DatabaseManager, expired: int, live: int) -> SessionStore:
    clock = Clock()
    store = SessionStore(db, SweptSession, idle_timeout=timedelta(hours=1), clock=clock)
    for _ in range(expired):
        await store.create({"old": True})
    clock.now += timedelta(minutes=50)
    for _ in range(live):
        await store.create({"old": False})
    clock.now += timedelta(minutes=20)  # the first ones are now 70 minutes idle
    return store


async def _wait_for(condition: Any) -> None:
    """Poll ``condition`` (the sweeper's counters have no event to wait on) for up to 10 s."""
    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def test_the_sweeper_deletes_expired_sessions_until_stopped(make_db: MakeDb) -> None:
    db = await make_db(Base.metadata)
    store = await _store_with_expired(db, expired=7, live=3)
    sweeper = SessionSweeper(store, batch_size=2, **FAST)
    sweeper.start()
    assert sweeper.running
    await _wait_for(lambda: sweeper.sweeps >= 2)
    await sweeper.stop()
    assert not sweeper.running
    assert sweeper.deleted == 7
    stats = await store.stats()
    assert (stats.active, stats.expired_waiting) == (3, 0)
    sweeps = sweeper.sweeps
    await asyncio.sleep(0.05)
    assert sweeper.sweeps == sweeps  # stopped means stopped


async def test_a_failing_sweep_is_logged_and_the_sweeper_keeps_going(
    make_db: MakeDb, caplog: pytest.LogCaptureFixture
) -> None:
    db = await make_db(Base.metadata)
    async with db.engine.begin() as connection:
        await connection.run_sync(Base.metadata.drop_all)  # every sweep now fails for real
    clock = Clock()
    store = SessionStore(db, SweptSession, idle_timeout=timedelta(hours=1), clock=clock)
    caplog.set_level(logging.ERROR, logger="aegis_shared.sessions")

    def failures() -> int:
        return sum("session sweep failed" in r.getMessage() for r in caplog.records)

    async with sweep_sessions(store, **FAST) as sweeper:
        await _wait_for(lambda: failures() >= 2)
        assert sweeper.running and sweeper.sweeps == 0
        async with db.engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        for _ in range(2):
            await store.create()
        clock.now += timedelta(hours=2)
        await _wait_for(lambda: sweeper.deleted == 2)
    assert not sweeper.running
    assert (await store.stats()).expired_waiting == 0


async def test_the_sweeper_runs_for_an_apps_lifespan(make_db: MakeDb) -> None:
    db = await make_db(Base.metadata)
    store = await _store_with_expired(db, expired=3, live=1)
    seen: list[SessionSweeper] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        async with sweep_sessions(store, **FAST) as sweeper:
            seen.append(sweeper)
            yield

    app = FastAPI(lifespan=lifespan)
    async with app.router.lifespan_context(app):
        await _wait_for(lambda: seen[0].deleted == 3)
    assert not seen[0].running
    assert (await store.stats()).active == 1


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"every": timedelta(0)}, ValueError),
        ({"every": 10}, ValueError),
        ({"jitter": timedelta(seconds=-1)}, ValueError),
        ({"batch_size": 0}, ValueError),
        ({"batch_size": True}, ValueError),
    ],
    ids=repr,
)
async def test_bad_options_are_refused_up_front(
    make_db: MakeDb, options: dict[str, Any], error: type[Exception]
) -> None:
    store = SessionStore(await make_db(Base.metadata), SweptSession)
    with pytest.raises(error):
        SessionSweeper(store, **options)


async def test_starting_twice_is_refused(make_db: MakeDb) -> None:
    store = SessionStore(await make_db(Base.metadata), SweptSession)
    sweeper = SessionSweeper(store)
    sweeper.start()
    try:
        with pytest.raises(RuntimeError, match="already running"):
            sweeper.start()
    finally:
        await sweeper.stop()
    with pytest.raises(TypeError, match="needs a SessionStore"):
        SessionSweeper(object())  # type: ignore[arg-type]
