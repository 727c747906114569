"""EventHub on every backend: fan-out with one read per wake-up, replay then live with no
gap or duplicate, resync of a slow subscriber, wake-ups from another manager (another
process), a killed LISTEN connection (PostgreSQL), a clean close, and no pinned pool.
"""

from __future__ import annotations

import asyncio
import gc
import warnings
from typing import Any

import pytest
from sqlalchemy import text

from aegis_shared.config import Settings
from aegis_shared.database import DatabaseManager
from aegis_shared.errors.exceptions import ConfigurationError
from aegis_shared.events import (
    Event,
    EventHub,
    Resync,
    Subscription,
    Trimmed,
    event_metadata,
    publish,
    wakeups,
)
from aegis_shared.testing import count_queries
from tests import pgbouncer
from tests.conftest import MakeDb

TIMEOUT = 10


async def send(db: DatabaseManager, channel: str, *values: Any) -> None:
    """Publish ``values`` to ``channel`` in one committed transaction."""
    async with db.session() as session:
        for value in values:
            await publish(session, channel, value)


async def take(subscription: Subscription, count: int) -> list[Event | Resync | Trimmed]:
    """Items off ``subscription`` until ``count`` events (markers included in the list)."""
    items: list[Event | Resync | Trimmed] = []
    async with asyncio.timeout(TIMEOUT):
        async for item in subscription:
            items.append(item)
            if sum(isinstance(i, Event) for i in items) == count:
                break
    return items


async def ready(hub: EventHub, channel: str) -> None:
    """Wait until the hub reads ``channel`` live (it knows the channel's head)."""
    async with asyncio.timeout(TIMEOUT):
        await hub._channels[channel].ready()


def positions(items: list[Event | Resync | Trimmed]) -> list[int]:
    return [item.position for item in items if isinstance(item, Event)]


async def until(condition: Any, what: str) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not condition():  # noqa: ASYNC110 (polls plain attributes, no event to wait on)
            await asyncio.sleep(0.005)


def live_reads(statements: list[str]) -> int:
    """The hub's reads of new events (not the commit hook's ``SELECT aegis_events.id``)."""
    reads = [s for s in statements if s.lstrip().startswith("SELECT aegis_events.")]
    return sum(1 for s in reads if not s.lstrip().startswith("SELECT aegis_events.id"))


async def test_live_events_reach_every_subscriber_with_one_read_per_wake_up(
    edb: DatabaseManager,
) -> None:
    # Polling slowed right down: here every wake-up comes from this process's own commits.
    async with EventHub(edb, poll_min=30, poll_max=30) as hub:
        subscriptions = [hub.subscribe("orders") for _ in range(50)]
        received: list[list[Event]] = [[] for _ in subscriptions]

        async def consume(n: int) -> None:
            async for item in subscriptions[n]:
                assert isinstance(item, Event)
                received[n].append(item)

        consumers = [asyncio.create_task(consume(n)) for n in range(50)]
        await ready(hub, "orders")
        await asyncio.sleep(0.05)  # every consumer is waiting on its queue
        with count_queries(edb) as counter:
            for k in range(1, 4):
                await send(edb, "orders", {"k": k})
                await until(lambda k=k: all(len(r) == k for r in received), f"event {k}")
        for task in consumers:
            task.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)

    assert all([e.data["k"] for e in r] == [1, 2, 3] for r in received)
    assert all([e.position for e in r] == [1, 2, 3] for r in received)
    assert live_reads(counter.statements) == 3, counter.statements
    assert hub.reads("orders") == 0  # forgotten after close


async def test_replay_then_live_has_no_gap_and_no_duplicate(edb: DatabaseManager) -> None:
    await send(edb, "orders", *range(1, 31))
    async with EventHub(edb, poll_min=0.02, poll_max=0.2) as hub:

        async def publisher() -> None:
            for n in range(31, 61):
                await send(edb, "orders", n)
                await asyncio.sleep(0.002)

        task = asyncio.create_task(publisher())
        await asyncio.sleep(0.01)  # subscribe while events are being published
        async with hub.subscribe("orders", after=10) as subscription:
            items = await take(subscription, 50)
        await task

    assert positions(items) == list(range(11, 61))
    assert [item.data for item in items if isinstance(item, Event)] == list(range(11, 61))


async def test_subscribe_after_none_follows_live_events_only(edb: DatabaseManager) -> None:
    await send(edb, "orders", "old")
    async with (
        EventHub(edb, poll_min=0.02, poll_max=0.2) as hub,
        hub.subscribe("orders") as subscription,
    ):
        pending = asyncio.create_task(take(subscription, 1))
        await ready(hub, "orders")
        await asyncio.sleep(0.05)
        await send(edb, "orders", "new")
        items = await pending
    assert [(e.position, e.data) for e in items if isinstance(e, Event)] == [(2, "new")]


async def test_slow_subscriber_is_resynced_from_the_log_with_bounded_memory(
    edb: DatabaseManager,
) -> None:
    async with EventHub(edb, queue_size=5, poll_min=30, poll_max=30) as hub:
        slow = hub.subscribe("orders", after=0)
        fast = hub.subscribe("orders", after=0)
        await send(edb, "orders", 1)
        assert positions(await take(slow, 1)) == [1]
        fast_items = asyncio.create_task(take(fast, 21))
        await send(edb, "orders", *range(2, 22))  # 20 events, one read, queue of 5
        assert positions(await fast_items) == list(range(1, 22))
        assert slow._queue.qsize() <= 5
        items = await take(slow, 20)
        await slow.aclose()
        await fast.aclose()

    assert items[0] == Resync("orders", after=1)
    assert positions(items) == list(range(2, 22))
    assert sum(isinstance(i, Resync) for i in items) == 1


async def test_events_from_another_manager_arrive(
    backend: str, edb: DatabaseManager, other: DatabaseManager
) -> None:
    # PostgreSQL: through NOTIFY (the safety poll is 30 s); SQLite and MariaDB: polling.
    async with (
        EventHub(edb, poll_min=0.02, poll_max=0.2) as hub,
        hub.subscribe("orders", after=0) as subscription,
    ):
        pending = asyncio.create_task(take(subscription, 5))
        await ready(hub, "orders")
        await asyncio.sleep(0.6)  # idle: the poll interval backs off to poll_max
        if backend != "postgresql":
            assert hub._interval == 0.2
        loop = asyncio.get_running_loop()
        started = loop.time()
        for n in range(1, 6):
            await send(other, "orders", n)
        items = await pending
        elapsed = loop.time() - started
    assert positions(items) == [1, 2, 3, 4, 5]
    assert elapsed < 2


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_killed_listener_reconnects_and_loses_nothing(
    edb: DatabaseManager, other: DatabaseManager
) -> None:
    async with (
        EventHub(edb, reconnect_min=0.05, reconnect_max=0.2) as hub,
        hub.subscribe("orders", after=0) as subscription,
    ):
        pending = asyncio.create_task(take(subscription, 40))
        await until(lambda: hub.listener_pid is not None, "the LISTEN connection")
        first_pid = hub.listener_pid
        for n in range(1, 41):
            await send(other, "orders", n)
            if n == 15:
                async with edb.session() as session:
                    killed = await session.scalar(
                        text("SELECT pg_terminate_backend(:pid)"), {"pid": first_pid}
                    )
                assert killed is True
            await asyncio.sleep(0.005)
        items = await pending
        assert hub.listener_connections >= 2
        assert hub.listener_pid not in (None, first_pid)

    assert positions(items) == list(range(1, 41))


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_notify_is_coalesced_and_sent_through_the_listen_connection(
    edb: DatabaseManager, other: DatabaseManager
) -> None:
    engine = edb.engine.sync_engine
    async with EventHub(edb) as hub:
        await until(lambda: hub.listener_pid is not None, "the LISTEN connection")
        before = wakeups.notifies_sent(engine)
        with count_queries(edb) as counter:
            await asyncio.gather(*(send(edb, f"burst-{n % 3}", n) for n in range(20)))
            await wakeups.drain(engine)
        sent = wakeups.notifies_sent(engine) - before
    assert 1 <= sent <= 20  # how many commits share one depends on timing; see below
    assert not [s for s in counter.statements if "pg_notify" in s], "no pooled NOTIFY"

    # Without a hub the NOTIFY goes through a pooled connection.
    with count_queries(other) as counter:
        await asyncio.gather(*(send(other, "burst", n) for n in range(20)))
        await wakeups.drain(other.engine.sync_engine)
    notifies = [s for s in counter.statements if "pg_notify" in s]
    assert 1 <= len(notifies) <= 20


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_commits_while_a_notify_is_pending_share_it(edb: DatabaseManager) -> None:
    engine = edb.engine.sync_engine
    with count_queries(edb) as counter:
        for n in range(20):  # 20 commits before the notifier's task gets to run
            wakeups.committed(engine, [f"burst-{n % 3}"])
        await wakeups.drain(engine)
    assert len([s for s in counter.statements if "pg_notify" in s]) == 1
    assert wakeups.notifies_sent(engine) == 1


async def test_idle_subscriptions_hold_no_pooled_connection(
    make_db: MakeDb, backend: str, through_pgbouncer: bool
) -> None:
    db = await make_db(event_metadata, pool_size=5, max_overflow=0, pool_timeout=2)
    async with EventHub(db, poll_min=0.02, poll_max=0.1) as hub:
        subscriptions = [hub.subscribe(f"room-{n % 10}") for n in range(100)]
        tasks = [asyncio.create_task(take(s, 1)) for s in subscriptions]
        for n in range(10):
            await ready(hub, f"room-{n}")
        await until(lambda: all(s.position is not None for s in subscriptions), "all waiting")
        if backend == "postgresql":
            await until(lambda: hub.listener_pid is not None, "the LISTEN connection")
        await asyncio.sleep(0.05)
        samples = []
        for _ in range(50):
            samples.append(db.pool_status()["main"]["checked_out"])
            await asyncio.sleep(0.01)
        if backend == "postgresql":
            assert max(samples) == 0  # woken by LISTEN, no polling
            async with db.session() as session:  # the LISTEN connection is not a pooled one
                name = await session.scalar(
                    text("SELECT application_name FROM pg_stat_activity WHERE pid = :pid"),
                    {"pid": hub.listener_pid},
                )
            assert name == "aegis-events"
        else:
            assert max(samples) <= 1  # at most the poll's own brief read
        # Every pooled connection is free for requests while 100 streams are open (through
        # pgbouncer, as many as it has server connections: each open transaction needs one).
        free = pgbouncer.DEFAULT_POOL_SIZE if through_pgbouncer else 5
        holders = [db.session_factory() for _ in range(free)]
        try:
            await asyncio.gather(*(s.execute(text("SELECT 1")) for s in holders))
        finally:
            for s in holders:
                await s.close()
        for n in range(10):
            await send(db, f"room-{n}", n)
        results = await asyncio.gather(*tasks)
        for subscription in subscriptions:
            await subscription.aclose()
    assert all(len(positions(r)) == 1 for r in results)
    await wakeups.drain(db.engine.sync_engine)
    assert db.pool_status()["main"]["checked_out"] == 0


async def test_close_ends_subscriptions_cleanly(backend: str, edb: DatabaseManager) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hub = EventHub(edb, poll_min=0.02, poll_max=0.1)
        subscription = hub.subscribe("orders")
        iterating = asyncio.create_task(take(subscription, 1))
        await ready(hub, "orders")
        if backend == "postgresql":
            await until(lambda: hub.listener_pid is not None, "the LISTEN connection")
        pid = hub.listener_pid
        await hub.close()
        assert await asyncio.wait_for(iterating, TIMEOUT) == []  # ended, not cancelled
        assert all(task.done() for task in hub._tasks)
        await hub.close()  # idempotent
        with pytest.raises(RuntimeError, match="was closed"):
            hub.subscribe("orders")
        gc.collect()
    assert [str(w.message) for w in caught] == []
    if pid is not None:
        async with edb.session() as session:
            alive = await session.scalar(
                text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
            )
        assert alive == 0


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_bad_arguments_are_refused(edb: DatabaseManager) -> None:
    async with EventHub(edb) as hub:
        with pytest.raises(ValueError, match="invalid event channel"):
            hub.subscribe("no spaces")
        with pytest.raises(ValueError, match="after=-1 is not a position"):
            hub.subscribe("orders", after=-1)
    with pytest.raises(ConfigurationError, match="poll_min=0"):
        EventHub(edb, poll_min=0)
    with pytest.raises(ConfigurationError, match="direct_url"):
        EventHub(edb, direct_url="postgresql://x@localhost/db")


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_listen_goes_to_the_direct_url(
    edb: DatabaseManager, caplog: pytest.LogCaptureFixture
) -> None:
    url = edb.url.render_as_string(hide_password=False)
    settings = Settings(database_url=url, database_direct_url=url)
    async with (
        EventHub.from_settings(edb, settings) as hub,
        hub.subscribe("orders", after=0) as subscription,
    ):
        await until(lambda: hub.listener_pid is not None, "the LISTEN connection")
        await send(edb, "orders", 1)
        assert positions(await take(subscription, 1)) == [1]

    # Nothing listens on port 1: the hub keeps trying there, never on DATABASE_URL.
    unreachable = edb.url.set(port=1).render_as_string(hide_password=False)
    async with EventHub(edb, direct_url=unreachable, reconnect_min=0.05) as hub:
        hub.subscribe("orders")
        await asyncio.sleep(0.3)
        assert hub.listener_pid is None
    assert "event hub cannot LISTEN on" in caplog.text
    assert ":1/" in caplog.text


async def test_latest_position_then_subscribe_after_it_misses_nothing(
    edb: DatabaseManager,
) -> None:
    async with EventHub(edb) as hub:
        assert await hub.latest_position("snap:1") == 0
        await send(edb, "snap:1", "a", "b")
        start = await hub.latest_position("snap:1")
        assert start == 2
        # A change that commits after the position was taken (while a snapshot is read)
        # still arrives once subscribed after that position.
        await send(edb, "snap:1", "c")
        async with hub.subscribe("snap:1", after=start) as events:
            items = await take(events, 1)
        assert [(i.position, i.data) for i in items if isinstance(i, Event)] == [(3, "c")]
        with pytest.raises(ValueError, match="channel"):
            await hub.latest_position("no spaces allowed")


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_the_listen_connection_connects_the_way_the_pool_does(
    make_db: MakeDb, db_url: Any
) -> None:
    # Query parameters SQLAlchemy's asyncpg dialect understands (TLS, the statement cache)
    # and connect_args: a DSN built from the URL made asyncpg send them as server settings,
    # which PostgreSQL refused, and the hub never listened.
    url = db_url.update_query_dict({"ssl": "disable", "prepared_statement_cache_size": "0"})
    db = await make_db(event_metadata)
    other_db = DatabaseManager(url, connect_args={"server_settings": {"jit": "off"}})
    try:
        async with EventHub(other_db) as hub, hub.subscribe("orders", after=0) as events:
            await until(lambda: hub.listener_pid is not None, "the LISTEN connection")
            async with db.session() as session:
                name = await session.scalar(
                    text("SELECT application_name FROM pg_stat_activity WHERE pid = :pid"),
                    {"pid": hub.listener_pid},
                )
            assert name == "aegis-events"
            await send(db, "orders", 1)
            assert positions(await take(events, 1)) == [1]
    finally:
        await other_db.close()
