"""The event log on every backend: an event exists iff its transaction committed, and the
positions of a channel are gapless and in commit order.

Outcomes are read back with ``read_events`` on a fresh connection (committed means another
connection sees it), and the rows themselves are counted where "nothing" is the claim.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import MetaData, func, select
from sqlalchemy.engine import URL

from aegis_shared.database import DatabaseManager, TransactionManager, UnitOfWork, with_db_retry
from aegis_shared.errors.exceptions import TransactionConflictError
from aegis_shared.events import (
    MAX_EVENT_BYTES,
    MAX_READ,
    channels_table,
    event_metadata,
    events_table,
    include_event_tables,
    positions,
    publish,
    read_events,
    wakeups,
)
from aegis_shared.testing import assert_max_queries, count_queries
from tests.conftest import MakeDb
from tests.faults import fault_proxy


class Boom(Exception):
    """An application error raised on purpose inside a block."""


@pytest.fixture
async def edb(make_db: MakeDb) -> AsyncIterator[DatabaseManager]:
    db = await make_db(event_metadata, pool_size=10, max_overflow=15)
    yield db
    await wakeups.drain(db.engine.sync_engine)  # the after-commit NOTIFY (PostgreSQL)


async def log(db: DatabaseManager, channel: str) -> list[tuple[int, Any]]:
    return [(e.position, e.data) for e in await read_events(db, channel, limit=MAX_READ)]


async def row_count(db: DatabaseManager) -> int:
    async with db.session() as session:
        return int(await session.scalar(select(func.count()).select_from(events_table)))


async def test_commit_publishes_in_order_through_every_way_of_committing(
    edb: DatabaseManager,
) -> None:
    async with edb.session() as session:
        await publish(session, "orders", {"n": 1})
        await publish(session, "orders", {"n": 2})
    async with UnitOfWork(edb) as uow:
        await publish(uow.session, "orders", {"n": 3})
        await uow.commit()
    async with edb.session_factory() as session, session.begin():
        await publish(session, "orders", ["n", 4])
    async with edb.session_factory() as session, TransactionManager(session).transaction():
        await publish(session, "orders", "five")

    assert await log(edb, "orders") == [
        (1, {"n": 1}),
        (2, {"n": 2}),
        (3, {"n": 3}),
        (4, ["n", 4]),
        (5, "five"),
    ]
    events = await read_events(edb, "orders")
    assert all(e.channel == "orders" and e.created_at.tzinfo is not None for e in events)


async def test_rollback_publishes_nothing(edb: DatabaseManager) -> None:
    with pytest.raises(Boom):
        async with edb.session() as session:
            await publish(session, "orders", {"n": 1})
            raise Boom
    async with UnitOfWork(edb) as uow:
        await publish(uow.session, "orders", {"n": 2})  # left without commit(): rolled back

    assert await log(edb, "orders") == []
    assert await row_count(edb) == 0
    async with edb.session() as session:  # the next commit still starts at 1
        await publish(session, "orders", {"n": 3})
    assert await log(edb, "orders") == [(1, {"n": 3})]


async def test_savepoint_rollback_publishes_nothing_and_leaves_no_gap(
    edb: DatabaseManager,
) -> None:
    async with UnitOfWork(edb) as uow:
        await publish(uow.session, "orders", "before")
        with pytest.raises(Boom):
            async with uow.savepoint():
                await publish(uow.session, "orders", "inside, rolled back")
                await publish(uow.session, "other", "inside, rolled back")
                raise Boom
        async with uow.savepoint():
            await publish(uow.session, "orders", "inside, released")
        await publish(uow.session, "orders", "after")
        await uow.commit()

    assert await log(edb, "orders") == [(1, "before"), (2, "inside, released"), (3, "after")]
    assert await log(edb, "other") == []
    async with edb.session() as session:  # no counter was made for "other"
        channels = (await session.scalars(select(channels_table.c.channel))).all()
    assert channels == ["orders"]


async def test_retried_attempt_publishes_nothing(edb: DatabaseManager) -> None:
    attempts = 0

    @with_db_retry(max_attempts=3, base_delay=0.001, max_delay=0.01)
    async def place_order() -> None:
        nonlocal attempts
        attempts += 1
        async with edb.session() as session:
            await publish(session, "orders", {"attempt": attempts})
            if attempts == 1:
                raise TransactionConflictError("simulated conflict on the first attempt")

    await place_order()
    assert attempts == 2
    assert await log(edb, "orders") == [(1, {"attempt": 2})]
    assert await row_count(edb) == 1


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"], indirect=True)
async def test_positions_follow_commit_order_not_publish_order(edb: DatabaseManager) -> None:
    # SQLite has one writer at a time, so it cannot interleave two publishing transactions.
    first = edb.session_factory()
    second = edb.session_factory()
    try:
        await publish(first, "orders", "published first, committed second")
        await publish(second, "orders", "published second, committed first")
        await second.commit()
        assert await log(edb, "orders") == [(1, "published second, committed first")]
        await first.commit()
    finally:
        await first.close()
        await second.close()

    assert await log(edb, "orders") == [
        (1, "published second, committed first"),
        (2, "published first, committed second"),
    ]
    async with edb.session() as session:
        rows = (
            await session.execute(
                select(events_table.c.id, events_table.c.position).order_by(events_table.c.id)
            )
        ).all()
    assert [position for _, position in rows] == [2, 1], "ids are publish order, not commit order"


async def test_positions_are_gapless_under_20_concurrent_publishers(edb: DatabaseManager) -> None:
    async def publisher(n: int) -> None:
        async with edb.session() as session:
            for k in range(1 + n % 3):
                await publish(session, "orders", {"writer": n, "k": k})
                await asyncio.sleep(0)
            await publish(session, f"writer-{n % 4}", n)

    await asyncio.gather(*(publisher(n) for n in range(20)))

    events = await log(edb, "orders")
    assert [position for position, _ in events] == list(range(1, len(events) + 1))
    assert len(events) == sum(1 + n % 3 for n in range(20))
    # One transaction's events are consecutive and in publish order.
    by_writer: dict[int, list[tuple[int, int]]] = {}
    for position, data in events:
        by_writer.setdefault(data["writer"], []).append((position, data["k"]))
    for entries in by_writer.values():
        assert [k for _, k in entries] == list(range(len(entries)))
        assert [p for p, _ in entries] == list(range(entries[0][0], entries[0][0] + len(entries)))
    for channel in range(4):
        assert [p for p, _ in await log(edb, f"writer-{channel}")] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"], indirect=True)
async def test_a_channel_lock_blocks_only_its_own_channel(edb: DatabaseManager) -> None:
    async with edb.session() as session:
        await publish(session, "b", "exists already")
    holder = edb.session_factory()
    try:
        await publish(holder, "a", "held")
        # What the commit hook does just before COMMIT: channel a's counter is now locked.
        await holder.run_sync(lambda sync: positions._raise_counter(sync, "a", 1))

        async def commit_to(channel: str) -> None:
            async with edb.session() as session:
                await publish(session, channel, f"to {channel}")

        await asyncio.wait_for(commit_to("b"), timeout=5)  # an existing channel
        await asyncio.wait_for(commit_to("c"), timeout=5)  # a channel's first event
        waiting = asyncio.create_task(commit_to("a"))
        await asyncio.sleep(0.5)
        assert not waiting.done(), "a second commit on channel a must wait for its lock"
        await holder.rollback()
        await asyncio.wait_for(waiting, timeout=5)
    finally:
        await holder.close()

    assert await log(edb, "a") == [(1, "to a")], "the rolled back holder left no gap"
    assert await log(edb, "b") == [(1, "exists already"), (2, "to b")]
    assert await log(edb, "c") == [(1, "to c")]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("channel", "data", "message"),
    [
        ("", 1, "invalid event channel ''"),
        ("has space", 1, "invalid event channel 'has space'"),
        ("x" * 101, 1, "1 to 100 characters"),
        (42, 1, "invalid event channel 42"),
        ("ok", {1, 2}, "must be JSON-serializable"),
        ("ok", float("nan"), "must be JSON-serializable"),
        ("ok", "x" * MAX_EVENT_BYTES, "over the limit of 65536"),
    ],
)
async def test_bad_input_is_refused_before_any_sql(
    edb: DatabaseManager, channel: Any, data: Any, message: str
) -> None:
    async with edb.session() as session:
        with count_queries(edb) as counter, pytest.raises(ValueError, match=message):
            await publish(session, channel, data)
        assert counter.count == 0
    assert await row_count(edb) == 0


async def test_largest_event_fits(edb: DatabaseManager) -> None:
    data = "é" * ((MAX_EVENT_BYTES - 2) // 2)  # two bytes each in UTF-8, plus the quotes
    async with edb.session() as session:
        await publish(session, "big", data)
    assert await log(edb, "big") == [(1, data)]


async def test_read_events_after_and_limit_in_one_statement(edb: DatabaseManager) -> None:
    async with edb.session() as session:
        for n in range(1, 8):
            await publish(session, "orders", n)
        await publish(session, "other", "not mine")
    await wakeups.drain(edb.engine.sync_engine)  # the commit's NOTIFY is not the read's

    with assert_max_queries(1, edb):
        events = await read_events(edb, "orders", after=2, limit=3)
    assert [(e.position, e.data) for e in events] == [(3, 3), (4, 4), (5, 5)]
    assert [e.position for e in await read_events(edb, "orders", after=5)] == [6, 7]
    assert await read_events(edb, "orders", after=7) == []
    assert await read_events(edb, "nobody") == []
    await wakeups.drain(edb.engine.sync_engine)  # the after-commit NOTIFY (PostgreSQL)
    assert edb.pool_status()["main"]["checked_out"] == 0

    async with edb.session() as session:  # in a session: its own unpublished events unseen
        await publish(session, "orders", 8)
        assert [e.position for e in await read_events(session, "orders", after=6)] == [7]
    assert [e.data for e in await read_events(edb, "orders", after=7)] == [8]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"after": -1}, "after=-1 is not a position"),
        ({"after": "3"}, "after='3' is not a position"),
        ({"after": True}, "after=True is not a position"),
        ({"limit": 0}, "limit=0 is invalid: pass an int from 1 to 1000"),
        ({"limit": MAX_READ + 1}, "limit=1001 is invalid"),
    ],
)
async def test_read_events_refuses_bad_input_before_any_sql(
    edb: DatabaseManager, kwargs: dict[str, Any], message: str
) -> None:
    with count_queries(edb) as counter, pytest.raises(ValueError, match=message):
        await read_events(edb, "orders", **kwargs)
    with pytest.raises(ValueError, match="invalid event channel"):
        await read_events(edb, "bad channel")
    assert counter.count == 0


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_event_tables_join_an_application_metadata_for_migrations(
    edb: DatabaseManager,
) -> None:
    app_metadata = MetaData()
    include_event_tables(app_metadata)
    include_event_tables(app_metadata)  # twice: left alone
    assert sorted(app_metadata.tables) == [
        "aegis_event_channels",
        "aegis_event_consumers",
        "aegis_event_dead_letters",
        "aegis_events",
    ]
    copied = app_metadata.tables["aegis_events"]
    assert {c.name for c in copied.constraints} >= {"uq_aegis_events_channel_position"}


async def test_a_publishing_commit_costs_one_statement_per_channel_on_postgresql(
    backend: str, edb: DatabaseManager
) -> None:
    session = edb.session_factory()
    try:
        for n in range(5):
            await publish(session, "orders", n)
        await publish(session, "other", "x")
        with count_queries(edb) as counter:
            await session.commit()
    finally:
        await session.close()
    # PostgreSQL: one statement with CTEs; SQLite has no data-modifying CTE (three), and
    # MariaDB not even RETURNING on its upsert (four).
    per_channel = {"postgresql": 1, "sqlite": 3, "mariadb": 4}[backend]
    assert counter.count == 2 * per_channel, counter.statements
    assert [p for p, _ in await log(edb, "orders")] == [1, 2, 3, 4, 5]


async def test_plain_begin_nested_blocks_are_followed_too(edb: DatabaseManager) -> None:
    session = edb.session_factory()
    try:
        await publish(session, "orders", "outer")
        nested = await session.begin_nested()
        await publish(session, "orders", "rolled back")
        await nested.rollback()
        await session.begin_nested()
        await publish(session, "orders", "in a SAVEPOINT still open at commit")
        await session.commit()
    finally:
        await session.close()
    assert await log(edb, "orders") == [(1, "outer"), (2, "in a SAVEPOINT still open at commit")]


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"], indirect=True)
async def test_attempt_cut_off_by_a_lost_connection_is_retried_and_publishes_once(
    edb: DatabaseManager, db_url: URL
) -> None:
    async with fault_proxy(db_url) as proxy:
        manager = DatabaseManager(proxy.url(db_url), pool_size=2, command_timeout=2)
        attempts = 0
        try:

            @with_db_retry(max_attempts=3, base_delay=0.001, max_delay=0.01)
            async def place_order() -> None:
                nonlocal attempts
                attempts += 1
                async with manager.session() as session:
                    await publish(session, "orders", {"attempt": attempts})
                    if attempts == 1:
                        proxy.drop_all()  # the server rolls the open transaction back

            await place_order()
        finally:
            await wakeups.drain(manager.engine.sync_engine)
            await manager.close()
    assert attempts == 2
    assert await log(edb, "orders") == [(1, {"attempt": 2})]
    assert await row_count(edb) == 1
