"""Reads on streaming replicas, on the suite's own primary and standby (tests/replication.py):
read-only work and a session's fast reads outside a transaction go to a healthy replica, a
unit of work never changes server, a session that read on a replica and then writes builds
only on what the primary has, a client
always sees its own writes (in the same task, and over HTTP through the middleware's
cookie) while other clients read from the replica, and an unhealthy replica is skipped
without an error reaching the reads."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import Integer, MetaData, String, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from aegis_shared.config import Settings
from aegis_shared.database import BaseRepository, DatabaseManager, UnitOfWork, with_db_retry
from aegis_shared.errors.exceptions import (
    ConfigurationError,
    ReadOnlySessionError,
    TransactionConflictError,
)
from aegis_shared.web import ReadYourWritesMiddleware, install_error_handlers
from tests.http import serve
from tests.replication import Pair

TIMEOUT = 15


class ReplicaBase(DeclarativeBase):
    metadata = MetaData()


class Note(ReplicaBase):
    __tablename__ = "replica_notes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    body: Mapped[str] = mapped_column(String(200))


class NoteRepository(BaseRepository[Note]):
    pass


class NotesUnitOfWork(UnitOfWork):
    notes: NoteRepository


async def until(condition: Callable[[], Any], what: str) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not condition():  # noqa: ASYNC110 (polls the manager's plain state)
            await asyncio.sleep(0.02)


async def on_standby(session: Any) -> bool:
    return bool(await session.scalar(text("SELECT pg_is_in_recovery()")))


@pytest.fixture
def max_lag() -> float:
    """The manager's replica_max_lag: above the 2 s apply delay the tests make, so that
    the lagging replica stays in use (the health test lowers it)."""
    return 10.0


@pytest.fixture
async def routed(replication_pair: Pair, max_lag: float) -> AsyncIterator[DatabaseManager]:
    """A manager on the pair's primary with its standby as replica, fresh tables, and
    the standby caught up and healthy."""
    db = DatabaseManager(
        replication_pair.primary,
        pool_size=5,
        replica_urls=[replication_pair.standby],
        replica_max_lag=max_lag,
        replica_check_interval=0.05,
    )
    replication_pair.set_apply_delay(0)
    await db.drop_all(ReplicaBase.metadata)
    await db.create_all(ReplicaBase.metadata)
    async with db.session(read_only=True):
        pass  # starts the monitor
    await until(lambda: db.pool_status()["replica-0"]["healthy"] == 1, "a healthy replica")
    yield db
    replication_pair.set_apply_delay(0)
    await db.close()


async def test_read_only_work_goes_to_the_replica_and_the_rest_stays_on_the_primary(
    routed: DatabaseManager,
) -> None:
    async with routed.session(read_only=True) as session:
        assert await on_standby(session)
        assert await NoteRepository(session).count() == 0  # the fast path, there too
    async with NotesUnitOfWork(routed, read_only=True) as uow:
        assert await on_standby(uow.session)
    # A plain session: its fast reads outside a transaction go to the replica, a statement
    # of its own (an ORM read, a write) to the primary.
    reads = routed.pool_status()["replica-0"]["reads"]
    async with routed.session() as session:
        assert await NoteRepository(session).count() == 0
        assert routed.pool_status()["replica-0"]["reads"] == reads + 1
        assert not await on_standby(session)
    # A unit of work that reads and then writes does both on the primary.
    async with NotesUnitOfWork(routed) as uow:
        assert await uow.notes.count() == 0
        await uow.notes.create({"body": "first"})
        assert not await on_standby(uow.session)
        await uow.commit()
    # A write in read-only work is refused before it is sent, wherever the work reads
    # (here the primary: this task has just written).
    with pytest.raises(ReadOnlySessionError, match="read_only=True"):
        async with NotesUnitOfWork(routed, read_only=True) as uow:
            await uow.notes.create({"body": "nope"})
            await uow.commit()
    status = routed.pool_status()["replica-0"]
    assert status["reads"] >= 2
    assert {"size", "checked_out", "healthy", "lag_ms"} <= set(status)


async def test_a_writer_sees_its_write_at_once_and_others_read_the_lagging_replica(
    routed: DatabaseManager, replication_pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="aegis_shared.database.replicas")
    replication_pair.set_apply_delay(2.0)
    await asyncio.sleep(0.2)

    async def reader() -> tuple[bool, int]:
        async with routed.session(read_only=True) as session:
            return await on_standby(session), await NoteRepository(session).count()

    async def elsewhere() -> tuple[bool, int]:
        # Another client: a context without this task's writes.
        task = asyncio.get_running_loop().create_task(reader(), context=contextvars.Context())
        return await task

    for trial in range(5):
        async with routed.session() as session:
            await NoteRepository(session).create({"body": f"note {trial}"})
        assert await reader() == (False, trial + 1)  # the primary, with the write
        standby, seen = await elsewhere()
        assert standby and seen <= trial  # the replica, 2 s behind
    decisions = [r.getMessage() for r in caplog.records if r.name.endswith("replicas")]
    assert "read-only session on the primary: no replica has this context's writes yet" in (
        decisions
    )
    assert "read-only session on replica-0" in decisions


def in_new_context(coro: Any) -> Any:
    """``coro`` run as another client would: in a context without this task's writes."""
    return asyncio.get_running_loop().create_task(coro, context=contextvars.Context())


async def test_a_session_that_read_on_a_stale_replica_and_writes_builds_on_the_primary(
    routed: DatabaseManager, replication_pair: Pair
) -> None:
    async with routed.session() as session:
        note = await NoteRepository(session).create({"body": "v1"})
    await until(lambda: routed.pool_status()["replica-0"]["lag_ms"] < 100, "the replica caught up")
    await asyncio.sleep(0.5)  # past the clock skew: the replica serves this note's readers
    replication_pair.set_apply_delay(2.0)
    await asyncio.sleep(0.2)

    async def change_elsewhere() -> None:
        async with routed.session() as session:
            await NoteRepository(session).update(note.id, body="v2")

    await in_new_context(change_elsewhere())

    async def read_plain() -> str:
        async with routed.session() as session:
            return (await NoteRepository(session).get_one(note.id)).body

    async def read_in_unit_of_work() -> str:
        async with NotesUnitOfWork(routed) as uow:
            return (await uow.notes.get_one(note.id)).body

    # A plain session's fast read is the replica's (2 s behind); a unit of work's the primary's.
    assert await in_new_context(read_plain()) == "v1"
    assert await in_new_context(read_in_unit_of_work()) == "v2"

    async def append_once() -> None:
        async with routed.session() as session:
            notes = NoteRepository(session)
            current = await notes.get_one(note.id)  # the replica: "v1"
            await notes.update(current.id, body=current.body + "!")  # the primary

    # Building on the replica's stale answer would lose "v2": the write's transaction
    # repeats the read on the primary, finds it changed, and refuses.
    with pytest.raises(TransactionConflictError, match="Retry"):
        await in_new_context(append_once())

    attempts = 0

    @with_db_retry(max_attempts=3)
    async def append() -> None:
        nonlocal attempts
        attempts += 1
        await append_once()  # a retry reads on the primary: the conflict asked for news

    await in_new_context(append())
    assert attempts == 2
    async with NotesUnitOfWork(routed) as uow:
        assert (await uow.notes.get_one(note.id)).body == "v2!"


async def test_a_plain_session_reads_its_own_writes_and_an_unchanged_read_writes_once(
    routed: DatabaseManager, replication_pair: Pair
) -> None:
    replication_pair.set_apply_delay(2.0)
    await asyncio.sleep(0.2)

    async def write_then_read() -> tuple[str, str]:
        async with routed.session() as session:
            note = await NoteRepository(session).create({"body": "mine"})
        async with routed.session() as session:
            notes = NoteRepository(session)
            seen = (await notes.get_one(note.id)).body  # the primary: the replica lags
            await notes.update(note.id, body="mine, edited")  # unchanged: no conflict
        async with routed.session() as session:
            return seen, (await NoteRepository(session).get_one(note.id)).body

    assert await in_new_context(write_then_read()) == ("mine", "mine, edited")


async def test_a_fast_read_on_a_replica_that_just_went_away_is_answered_by_the_primary(
    routed: DatabaseManager, replication_pair: Pair
) -> None:
    # A monitor that looks once: the replica stays "healthy" after it stops, as it would
    # between two checks.
    db = DatabaseManager(
        replication_pair.primary,
        pool_size=2,
        replica_urls=[replication_pair.standby],
        replica_check_interval=3600,
    )
    try:
        async with db.session() as session:
            note = await NoteRepository(session).create({"body": "kept"})
        await asyncio.sleep(0.5)  # past the clock skew

        async def read() -> str:
            async with db.session() as session:
                return (await NoteRepository(session).get_one(note.id)).body

        assert await in_new_context(read()) == "kept"
        assert db.pool_status()["replica-0"]["reads"] == 1  # the replica answered
        replication_pair.stop_standby()
        try:
            assert await in_new_context(read()) == "kept"  # no error: the primary answered
            status = db.pool_status()["replica-0"]
            assert status["reads"] == 2 and status["healthy"] == 1  # routed there, failed over
        finally:
            replication_pair.start_standby()
    finally:
        await db.close()


def app_on(db: DatabaseManager) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(ReadYourWritesMiddleware, db=db, secure=False)

    async def notes() -> AsyncIterator[NotesUnitOfWork]:
        async with NotesUnitOfWork(db, read_only=True) as uow:
            yield uow

    @app.post("/notes")
    async def add(body: dict[str, str]) -> dict[str, int]:
        async with NotesUnitOfWork(db) as uow:
            note = await uow.notes.create({"body": body["body"]})
            await uow.commit()
        return {"id": note.id}

    @app.get("/notes/{note_id}")
    async def show(note_id: int, uow: NotesUnitOfWork = Depends(notes)) -> dict[str, Any]:  # noqa: B008
        note = await uow.notes.get_one(note_id)
        return {"id": note.id, "body": note.body, "standby": await on_standby(uow.session)}

    return app


async def test_200_write_then_read_trials_over_http_see_their_write_every_time(
    routed: DatabaseManager, replication_pair: Pair
) -> None:
    replication_pair.set_apply_delay(2.0)
    await asyncio.sleep(0.2)
    before = routed.pool_status()
    async with (
        serve(app_on(routed)) as base,
        httpx.AsyncClient(base_url=base) as writer,
        httpx.AsyncClient(base_url=base) as other,
    ):
        missed = 0
        for trial in range(200):
            created = await writer.post("/notes", json={"body": f"trial {trial}"})
            assert created.status_code == 200
            assert "aegis_read_after" in created.headers["set-cookie"]
            note_id = created.json()["id"]
            read = await writer.get(f"/notes/{note_id}")
            if read.status_code != 200 or read.json()["body"] != f"trial {trial}":
                missed += 1
            assert read.json()["standby"] is False
        assert missed == 0
        # A client that has not written reads the replica (which lags 2 s: the last
        # note is not there yet).
        stale = await other.get(f"/notes/{note_id}")
        assert stale.status_code == 404
        assert "aegis_read_after" not in stale.headers.get("set-cookie", "")
    after = routed.pool_status()
    assert after["replica-0"]["reads"] == before["replica-0"]["reads"] + 1
    assert after["main"]["read_only_sessions"] == before["main"]["read_only_sessions"] + 200


@pytest.mark.parametrize("max_lag", [1.0])
async def test_a_replica_that_is_down_or_lags_is_skipped_and_rejoins(
    routed: DatabaseManager, replication_pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aegis_shared.database.replicas")

    async def read_only_count() -> tuple[bool, int]:
        async with NotesUnitOfWork(routed, read_only=True) as uow:
            return await on_standby(uow.session), await uow.notes.count()

    def healthy() -> int:
        return routed.pool_status()["replica-0"]["healthy"]

    replication_pair.stop_standby()
    try:
        await until(lambda: healthy() == 0, "the replica skipped")
        assert await read_only_count() == (False, 0)  # the primary, no error
    finally:
        replication_pair.start_standby()
    await until(lambda: healthy() == 1, "the replica back")
    assert (await read_only_count())[0] is True

    # Lag beyond replica_max_lag (1 s): writes keep coming, the standby applies them 3 s late.
    replication_pair.set_apply_delay(3.0)
    await asyncio.sleep(0.2)
    for n in range(30):
        async with routed.session() as session:
            await NoteRepository(session).create({"body": f"n{n}"})
        await asyncio.sleep(0.05)
        if healthy() == 0:
            break
    await until(lambda: healthy() == 0, "the lagging replica skipped")
    assert (await read_only_count())[0] is False
    replication_pair.set_apply_delay(0)
    await until(lambda: healthy() == 1, "the replica caught up")
    messages = [r.getMessage() for r in caplog.records]
    assert any("skipped: unreachable" in m for m in messages), messages
    assert any("skipped: lags" in m for m in messages), messages
    assert any("rejoined" in m for m in messages), messages
    assert all("127.0.0.1:" not in m or "***" not in m for m in messages)


def test_replica_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_REPLICA_URLS", " postgresql://a@r1/app, postgresql://a@r2/app ")
    monkeypatch.setenv("DATABASE_REPLICA_MAX_LAG", "2.5")
    settings = Settings()
    assert settings.database_replica_urls == ["postgresql://a@r1/app", "postgresql://a@r2/app"]
    assert settings.database_replica_max_lag == 2.5
    monkeypatch.setenv("DATABASE_REPLICA_URLS", "postgresql://a:secret@r1/app,not a url")
    with pytest.raises(ConfigurationError) as caught:
        Settings()
    assert "secret" not in str(caught.value)
    with pytest.raises(ConfigurationError, match="PostgreSQL streaming standbys"):
        DatabaseManager("sqlite+aiosqlite:///x.db", replica_urls=["sqlite+aiosqlite:///y.db"])


async def test_without_replicas_read_only_work_runs_on_the_primary(
    routed: DatabaseManager, replication_pair: Pair
) -> None:
    plain = DatabaseManager(replication_pair.primary, pool_size=2)
    try:
        async with plain.session(read_only=True) as session:
            assert not await on_standby(session)
        with pytest.raises(ValueError, match="not both"):
            async with plain.session(read_only=True, write=True):
                pass
        with pytest.raises(ValueError, match="not both"):
            NotesUnitOfWork(plain, read_only=True, write=True)
        assert "replica-0" not in plain.pool_status()
        assert not plain.has_replicas
        # Without replicas the middleware sets no cookie: every read is on the primary.
        async with serve(app_on(plain)) as base, httpx.AsyncClient(base_url=base) as client:
            await plain.create_all(ReplicaBase.metadata)
            created = await client.post("/notes", json={"body": "x"})
        assert created.status_code == 200
        assert "aegis_read_after" not in created.headers.get("set-cookie", "")
    finally:
        await plain.close()
