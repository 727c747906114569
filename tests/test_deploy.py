"""The fridge example deployed as docs/guide.md's "Deploying" section draws it, end to end:
``uvicorn --workers 2`` (one command, two worker processes), DATABASE_URL through a real
pgbouncer in transaction mode in front of the suite's own primary, the primary itself as
DATABASE_DIRECT_URL (the event hub's LISTEN) and its streaming standby as replica.

Over loopback with httpx, every request on a new connection so that both workers answer:
a visitor sees its own changes at once (also while the standby applies WAL 2 s late) while
a stranger reads the lagging standby, the session store works whichever worker answers, a
deadlock is retried to a success, and a stream opened on one worker receives the changes
made through the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from aegis_demo.fridge.app import prepare_database
from aegis_shared.database import DatabaseManager
from tests import pgbouncer
from tests.conftest import IN_CI
from tests.processes import uvicorn
from tests.replication import Pair
from tests.test_fridge_live import Stream, follow

MILK, EGGS, BUTTER, CARROT, ONION, TOMATO = 1, 2, 3, 4, 5, 6
WORKER = "x-worker-pid"
#: Generous bounds: the test is about outcomes, not speed.
TIMEOUT = 15.0


@dataclass
class Deployment:
    """The served app and the servers behind it."""

    base: str
    primary: URL  # the test database on the primary, direct
    standby: URL  # the same database on the standby
    pair: Pair


def _pgbouncer_in_front_of(primary: URL) -> contextlib.AbstractContextManager[URL]:
    if pgbouncer.binary() is None:
        message = f"pgbouncer is not available (not installed; {pgbouncer.INSTALL_HINT})"
        if IN_CI:
            pytest.fail(f"{message}; CI=true requires it", pytrace=False)
        pytest.skip(message)
    return pgbouncer.running(primary)


@contextlib.contextmanager
def _env(**values: str) -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("DATABASE_")}
    yield env | values


async def _scalar(url: URL, sql: str, **params: object) -> object:
    """Run ``sql`` on its own connection (autocommit); its first value, if it has rows."""
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            result = await conn.execute(text(sql), params)
            return result.scalar() if result.returns_rows else None
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def _database_on(pair: Pair) -> AsyncIterator[tuple[URL, URL]]:
    """A fresh database of this test on the primary, once the standby has it too."""
    name = f"aegis_deploy_{secrets.token_hex(4)}"
    await _scalar(pair.primary, f'CREATE DATABASE "{name}"')
    primary, standby = pair.primary.set(database=name), pair.standby.set(database=name)
    try:
        async with asyncio.timeout(TIMEOUT):
            while True:
                try:
                    await _scalar(standby, "SELECT 1")
                    break
                except Exception:  # not replayed yet
                    await asyncio.sleep(0.05)
        yield primary, standby
    finally:
        await _scalar(pair.primary, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def deployed(replication_pair: Pair, tmp_path: Path) -> AsyncIterator[Deployment]:
    """``uvicorn tests.deploy_app:app --workers 2`` on the topology; yields where it is."""
    replication_pair.set_apply_delay(0)
    async with contextlib.AsyncExitStack() as stack:
        primary, standby = await stack.enter_async_context(_database_on(replication_pair))
        bouncer = stack.enter_context(_pgbouncer_in_front_of(primary))
        # A deployment's set-up step (migrations, here the demo's tables and catalogue)
        # runs once before the workers start, rather than in both at once.
        setup = DatabaseManager(primary)
        await prepare_database(setup)
        await setup.close()
        env = stack.enter_context(
            _env(
                DATABASE_URL=bouncer.render_as_string(hide_password=False),
                DATABASE_PGBOUNCER="true",
                DATABASE_DIRECT_URL=primary.render_as_string(hide_password=False),
                DATABASE_REPLICA_URLS=standby.render_as_string(hide_password=False),
                # Above the 2 s apply delay below, so the lagging standby stays in use.
                DATABASE_REPLICA_MAX_LAG="10",
                DATABASE_STATEMENT_TIMEOUT="30",
                DATABASE_POOL_SIZE="5",
                SESSION_COOKIE_SECURE="false",
                FRIDGE_ADMIN_TOKEN="test-admin-token-0123456789",
            )
        )
        base = await stack.enter_async_context(
            uvicorn(
                "tests.deploy_app:app",
                env=env,
                log=tmp_path / "uvicorn.log",
                ready_path="/ingredients",
                workers=2,
            )
        )
        try:
            await _warm(base)
            yield Deployment(base, primary, standby, replication_pair)
        finally:
            replication_pair.set_apply_delay(0)


async def _warm(base: str) -> None:
    """Read through both workers, then give their replica monitors (started by a first
    read-only session) a few checks: a monitor that starts while the standby lags has no
    sample the standby has reached yet, and keeps reads on the primary until it has one."""
    pids = set()
    async with _client(base) as client, asyncio.timeout(TIMEOUT):
        while len(pids) < 2:
            answers = await asyncio.gather(*(client.get("/ingredients") for _ in range(4)))
            pids |= {answer.headers[WORKER] for answer in answers}
    await asyncio.sleep(0.6)


def _client(base: str, **kwargs: object) -> httpx.AsyncClient:
    """A client that opens a new connection for every request (no keep-alive), so that
    either worker may answer each one."""
    return httpx.AsyncClient(
        base_url=base,
        limits=httpx.Limits(max_keepalive_connections=0),
        timeout=TIMEOUT,
        **kwargs,  # type: ignore[arg-type]
    )


def _names(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["name"] for item in response.json()["ingredients"]]


async def test_a_visitor_sees_its_writes_through_either_worker(deployed: Deployment) -> None:
    pids: set[str] = set()
    async with _client(deployed.base) as visitor, _client(deployed.base) as stranger:
        added = await visitor.post("/fridge/ingredients", json={"ingredient_ids": [MILK]})
        assert _names(added) == ["milk"]
        assert "aegis_read_after" in visitor.cookies  # the read-your-writes token

        # The standby now applies WAL 2 s late: the visitor's reads still see each write at
        # once (they go to the primary while the standby lacks it), whichever worker reads.
        deployed.pair.set_apply_delay(2.0)
        await asyncio.sleep(0.3)
        expected = ["milk"]
        for ingredient, name in ((EGGS, "eggs"), (BUTTER, "butter"), (CARROT, "carrot")):
            added = await visitor.post("/fridge/ingredients", json={"ingredient_ids": [ingredient]})
            expected.append(name)
            assert _names(added) == expected
            pids.add(added.headers[WORKER])
            reads = await asyncio.gather(*(visitor.get("/fridge") for _ in range(6)))
            for read in reads:
                assert _names(read) == expected
                pids.add(read.headers[WORKER])

        # A stranger has written nothing: its catalogue read goes to the standby, which
        # does not have an ingredient committed on the primary a moment ago...
        await _scalar(
            deployed.primary,
            "INSERT INTO ingredients (name, category) VALUES ('basil', 'herb')",
        )
        catalogue = await stranger.get("/ingredients")
        assert catalogue.status_code == 200
        assert "basil" not in [item["name"] for item in catalogue.json()]
        assert "aegis_read_after" not in stranger.cookies
        # ...until the standby has applied it.
        async with asyncio.timeout(TIMEOUT):
            while True:
                names = [i["name"] for i in (await stranger.get("/ingredients")).json()]
                if "basil" in names:
                    break
                await asyncio.sleep(0.2)

        # The session (kept on the primary by the store) is the same whichever worker
        # answers, over many requests; a login's new session id is honoured by both.
        assert (await visitor.post("/login", json={"user": "ann"})).status_code == 200
        for _ in range(4):
            reads = await asyncio.gather(*(visitor.get("/fridge") for _ in range(6)))
            for read in reads:
                assert read.json()["user"] == "ann"
                assert _names(read) == expected
                pids.add(read.headers[WORKER])
    assert len(pids) == 2, f"one worker answered every request: {pids}"


async def _waiting_on_a_lock(primary: URL) -> None:
    async with asyncio.timeout(TIMEOUT):
        while True:
            waiting = await _scalar(
                primary,
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            if waiting:
                return
            await asyncio.sleep(0.05)


async def _next_data(stream: Stream) -> object:
    _, message = await stream.next()
    return message.data


async def test_retries_and_live_events_cross_workers(deployed: Deployment) -> None:
    async with _client(deployed.base) as tab_one:
        assert (
            await tab_one.post("/fridge/ingredients", json={"ingredient_ids": [MILK]})
        ).status_code == 200
        async with (
            _client(deployed.base, cookies=tab_one.cookies) as tab_two,
            follow(tab_two) as stream,
        ):
            streaming_pid = stream.response.headers[WORKER]
            _, snapshot = await stream.next()
            assert snapshot.event == "snapshot"

            # Changes made through the other worker arrive on this stream: add and take
            # out eggs until a change was made through the other worker.
            other = False
            for attempt in range(40):
                change = {"ingredient_ids": [EGGS]}
                if attempt % 2 == 0:
                    answer = await tab_one.post("/fridge/ingredients", json=change)
                    assert await _next_data(stream) == {"added": [EGGS]}
                else:
                    answer = await tab_one.request("DELETE", "/fridge/ingredients", json=change)
                    assert await _next_data(stream) == {"removed": [EGGS]}
                assert answer.status_code == 200
                if answer.headers[WORKER] != streaming_pid and attempt % 2 == 1:
                    other = True
                    break
            assert other, "every change went through the streaming worker"

            # A deadlock with another transaction: the request's transaction is the one
            # PostgreSQL aborts (the other waits longer before checking), the library
            # retries it, and the request succeeds with one event, not two.
            session_id = await _scalar(
                deployed.primary, "SELECT session_id FROM user_fridge_ingredients LIMIT 1"
            )
            blocker = create_async_engine(deployed.primary)
            try:
                async with blocker.connect() as conn:
                    await conn.execute(text("SET LOCAL deadlock_timeout = '20s'"))
                    insert = text(
                        "INSERT INTO user_fridge_ingredients "
                        "(session_id, ingredient_id, added_at) VALUES (:s, :i, now())"
                    )
                    await conn.execute(insert, {"s": session_id, "i": CARROT})
                    body = {"ingredient_ids": [ONION, CARROT]}
                    request = asyncio.create_task(tab_one.post("/fridge/ingredients", json=body))
                    await _waiting_on_a_lock(deployed.primary)  # on CARROT, after ONION
                    # Raises if this transaction were the one aborted.
                    await conn.execute(insert, {"s": session_id, "i": ONION})
                    await conn.rollback()
                    answer = await request
            finally:
                await blocker.dispose()
            assert sorted(_names(answer)) == ["carrot", "milk", "onion"]
            assert await _next_data(stream) == {"added": [ONION, CARROT]}
            await asyncio.sleep(0.3)
            assert stream.messages.empty()
