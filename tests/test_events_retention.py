"""Event retention on every backend: age and count trims remove exactly the expected prefix
in bounded batches, never an uncommitted event nor a counter row; positions go on after a
trim; a reader or subscriber resuming from a trimmed position is told (EventsTrimmedError,
Trimmed, an SSE ``resync`` event) and then gets the retained events with no duplicate; the
sweeper leaves no task behind; bad settings are refused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from aegis_shared.config import Settings
from aegis_shared.database import DatabaseManager
from aegis_shared.errors.exceptions import ConfigurationError
from aegis_shared.events import (
    Event,
    EventHub,
    EventsTrimmedError,
    EventSweeper,
    Resync,
    RetentionPolicy,
    Trimmed,
    channels_table,
    event_metadata,
    events_table,
    publish,
    read_events,
    retention_cut,
    sweep_events,
    trim_events,
)
from aegis_shared.events.retention import MAX_BATCH_SIZE
from aegis_shared.testing import count_queries
from tests import sse
from tests.conftest import MakeDb
from tests.http import serve
from tests.test_events_hub import take
from tests.test_events_sse import make_app

TIMEOUT = 10
NOW = datetime(2030, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)


async def send(db: DatabaseManager, channel: str, *values: Any) -> None:
    """Publish ``values`` to ``channel`` in one committed transaction."""
    async with db.session() as session:
        for value in values:
            await publish(session, channel, value)


async def age(
    db: DatabaseManager, channel: str, positions: range | list[int], at: datetime
) -> None:
    """Make the events of ``channel`` at ``positions`` look published at ``at``."""
    e = events_table.c
    async with db.session() as session:
        await session.execute(
            update(events_table)
            .where(e.channel == channel, e.position.in_(list(positions)))
            .values(created_at=at)
        )


async def stored(db: DatabaseManager, channel: str) -> list[int]:
    """The positions of ``channel`` still in the table (a NULL one shows as 0)."""
    e = events_table.c
    async with db.session() as session:
        rows = await session.scalars(select(e.position).where(e.channel == channel))
        return sorted(p or 0 for p in rows)


async def counters(db: DatabaseManager) -> dict[str, int]:
    c = channels_table.c
    async with db.session() as session:
        rows = await session.execute(select(c.channel, c.last_position))
        return {str(name): int(last) for name, last in rows}


def deletes(statements: list[str]) -> int:
    return sum(1 for s in statements if s.lstrip().upper().startswith("DELETE FROM AEGIS_EVENTS"))


def shape(items: list[Event | Resync | Trimmed]) -> list[Any]:
    return [item.position if isinstance(item, Event) else item for item in items]


# -- trimming ----------------------------------------------------------------------------


async def test_age_trim_removes_the_old_prefix_in_batches(edb: DatabaseManager) -> None:
    await send(edb, "a", *range(1, 11))
    await send(edb, "b", *range(1, 4))
    await age(edb, "a", range(1, 8), NOW - 8 * DAY)
    await age(edb, "a", [6], NOW - 1 * DAY)  # young: keeps 6 and the old 7 after it
    await age(edb, "a", [9], NOW - 9 * DAY)  # old, but behind young 8: kept
    await age(edb, "a", [8, 10], NOW - 1 * DAY)
    await age(edb, "b", range(1, 4), NOW - 1 * DAY)
    batches: list[int] = []

    policy = RetentionPolicy(max_age=7 * DAY, batch_size=2)
    with count_queries(edb) as counter:
        removed = await trim_events(edb, policy, now=NOW, on_batch=batches.append)

    assert removed == 5
    assert batches == [2, 2, 1]
    assert deletes(counter.statements) == 3, counter.statements
    assert await stored(edb, "a") == [6, 7, 8, 9, 10]
    assert await stored(edb, "b") == [1, 2, 3]
    assert await counters(edb) == {"a": 10, "b": 3}  # counter rows untouched
    assert await trim_events(edb, policy, now=NOW) == 0  # nothing left to trim

    # Once 6 ages out, the old 7 and 9 behind it go too.
    await age(edb, "a", [6, 8], NOW - 8 * DAY)
    assert await trim_events(edb, policy, now=NOW) == 4
    assert await stored(edb, "a") == [10]


async def test_count_trim_keeps_the_last_events_of_each_channel(edb: DatabaseManager) -> None:
    await send(edb, "a", *range(1, 11))
    await send(edb, "b", 1, 2)
    batches: list[int] = []

    policy = RetentionPolicy(max_age=None, max_count=3, batch_size=3)
    with count_queries(edb) as counter:
        removed = await trim_events(edb, policy, on_batch=batches.append)

    assert removed == 7
    assert batches == [3, 3, 1]
    assert deletes(counter.statements) == 3
    assert await stored(edb, "a") == [8, 9, 10]
    assert await stored(edb, "b") == [1, 2]
    assert await counters(edb) == {"a": 10, "b": 2}


async def test_either_rule_trims_and_positions_go_on_after(edb: DatabaseManager) -> None:
    await send(edb, "a", *range(1, 7))
    await age(edb, "a", range(1, 3), NOW - 8 * DAY)
    await age(edb, "a", range(3, 7), NOW)
    policy = RetentionPolicy(max_age=7 * DAY, max_count=3)
    assert await trim_events(edb, policy, now=NOW) == 3  # 1-2 by age, 3 by count
    assert await stored(edb, "a") == [4, 5, 6]

    everything = RetentionPolicy(max_age=timedelta(seconds=1))
    assert await trim_events(edb, everything, now=NOW + DAY) == 3
    assert await stored(edb, "a") == []
    await send(edb, "a", "next")
    assert [(e.position, e.data) for e in await read_events(edb, "a", after=6)] == [(7, "next")]


async def test_an_uncommitted_event_is_never_removed(backend: str, edb: DatabaseManager) -> None:
    await send(edb, "a", 1, 2, 3)
    policy = RetentionPolicy(max_age=timedelta(seconds=1), max_count=1)
    later = datetime.now(UTC) + 30 * DAY  # every event, the open one too, is old by then
    async with edb.session() as session:
        await publish(session, "a", "open")
        await session.flush()
        trim = asyncio.create_task(trim_events(edb, policy, now=later))
        if backend != "sqlite":
            # Nothing waits for the open transaction: its row matches no range.
            assert await asyncio.wait_for(asyncio.shield(trim), TIMEOUT) == 3
        else:
            await asyncio.sleep(0.2)  # SQLite has one writer: the trim waits for the commit
    assert await asyncio.wait_for(trim, TIMEOUT) == 3
    assert [(e.position, e.data) for e in await read_events(edb, "a", after=3)] == [(4, "open")]
    assert await stored(edb, "a") == [4]


async def test_disabled_policy_runs_no_sql(edb: DatabaseManager) -> None:
    await send(edb, "a", 1)
    with count_queries(edb) as counter:
        assert await trim_events(edb, RetentionPolicy(max_age=None), now=NOW + 365 * DAY) == 0
    assert counter.statements == []


def test_retention_cut_is_the_one_rule() -> None:
    by_age = RetentionPolicy(max_age=DAY)
    assert retention_cut(by_age, last_position=10, first_young=4) == 3
    assert retention_cut(by_age, last_position=10, first_young=None) == 10
    by_count = RetentionPolicy(max_age=None, max_count=4)
    assert retention_cut(by_count, last_position=10, first_young=None) == 6
    assert retention_cut(by_count, last_position=3, first_young=None) == 0


# -- readers and subscribers told of a trim -----------------------------------------------


async def test_read_events_after_a_trimmed_position_raises_then_resumes(
    edb: DatabaseManager,
) -> None:
    await send(edb, "a", *range(1, 11))
    await trim_events(edb, RetentionPolicy(max_age=None, max_count=4))

    for after in (0, 2, 5):
        with pytest.raises(EventsTrimmedError, match="reload the state") as caught:
            await read_events(edb, "a", after=after)
        assert (caught.value.channel, caught.value.after) == ("a", after)
        assert caught.value.resume_after == 6
    assert [e.position for e in await read_events(edb, "a", after=6)] == [7, 8, 9, 10]
    assert [e.position for e in await read_events(edb, "a", after=8)] == [9, 10]
    assert await read_events(edb, "a", after=10) == []  # caught up: no error
    assert await read_events(edb, "unknown", after=0) == []

    # Nothing retained at all: the counter says what was missed.
    await trim_events(edb, RetentionPolicy(max_age=timedelta(seconds=1)), now=NOW)
    with pytest.raises(EventsTrimmedError) as caught:
        await read_events(edb, "a", after=7)
    assert caught.value.resume_after == 10
    async with edb.session() as session:  # inside a transaction too
        with pytest.raises(EventsTrimmedError):
            await read_events(session, "a", after=0)
    assert await read_events(edb, "a", after=10) == []


async def test_subscriber_resuming_from_a_trimmed_position_is_told_then_follows(
    edb: DatabaseManager,
) -> None:
    await send(edb, "a", *range(1, 11))
    await trim_events(edb, RetentionPolicy(max_age=None, max_count=4))
    async with EventHub(edb, poll_min=0.02, poll_max=0.2) as hub:
        async with hub.subscribe("a", after=2) as subscription:
            replayed = await take(subscription, 4)
            pending = asyncio.create_task(take(subscription, 1))
            await asyncio.sleep(0.05)
            await send(edb, "a", 11)
            live = await pending
        async with hub.subscribe("a", after=7) as subscription:  # nothing missed
            untouched = await take(subscription, 4)

    assert shape(replayed) == [Trimmed("a", after=2, resume_after=6), 7, 8, 9, 10]
    assert shape(live) == [11]
    assert shape(untouched) == [8, 9, 10, 11]


async def test_slow_subscriber_behind_the_retention_gets_trimmed_not_only_resync(
    edb: DatabaseManager,
) -> None:
    async with EventHub(edb, queue_size=5, poll_min=30, poll_max=30) as hub:
        slow = hub.subscribe("a", after=0)
        await send(edb, "a", 1)
        assert shape(await take(slow, 1)) == [1]
        await send(edb, "a", *range(2, 22))  # overflows the queue of 5
        await trim_events(edb, RetentionPolicy(max_age=None, max_count=5))
        items = await take(slow, 5)
        await slow.aclose()

    got = shape(items)
    # Whether the overflow (Resync) is noticed before the trim depends on when the hub
    # wakes; either way the subscriber is told what was trimmed, then reads on.
    if got and got[0] == Resync("a", after=1):
        got = got[1:]
    assert got == [Trimmed("a", after=1, resume_after=16), 17, 18, 19, 20, 21]


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"], indirect=True)
async def test_hub_that_fell_behind_the_retention_reads_on(
    make_db: MakeDb, edb: DatabaseManager
) -> None:
    # Polled backends with polling slowed right down: another manager's commits (another
    # process) are not seen until the hub is woken, by which time most were trimmed.
    other = await make_db(default=False, pool_size=2)
    async with (
        EventHub(edb, poll_min=30, poll_max=30) as hub,
        hub.subscribe("a") as subscription,
    ):
        pending = asyncio.create_task(take(subscription, 3))
        async with asyncio.timeout(TIMEOUT):
            await hub._channels["a"].ready()
        await send(other, "a", *range(1, 11))
        await trim_events(other, RetentionPolicy(max_age=None, max_count=3))
        hub._wake_channel("a")
        items = await pending

    assert shape(items) == [Trimmed("a", after=0, resume_after=7), 8, 9, 10]


async def check_resync_after_trim(
    edb: DatabaseManager, app_for: Callable[[EventHub], Any], *, lifespan: str = "off"
) -> None:
    """``GET /events/a`` of ``app_for(hub)`` from a trimmed position: a ``resync`` event,
    then the retained events."""
    await send(edb, "a", *range(1, 11))
    await trim_events(edb, RetentionPolicy(max_age=None, max_count=4))
    async with (
        EventHub(edb, poll_min=0.02, poll_max=0.2) as hub,
        serve(app_for(hub), lifespan=lifespan) as base,
        httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as client,
    ):
        headers = {"Last-Event-ID": "3"}
        async with client.stream("GET", "/events/a", headers=headers) as response:
            messages = await read_sse(response.aiter_lines(), 5)

    assert messages[0] == {
        "event": "resync",
        "id": "6",
        "data": {"after": 3, "resume_after": 6},
    }
    assert [(m.get("event"), m["id"], m["data"]) for m in messages[1:]] == [
        (None, "7", 7),
        (None, "8", 8),
        (None, "9", 9),
        (None, "10", 10),
    ]


async def test_sse_client_resuming_from_a_trimmed_position_gets_a_resync_event(
    edb: DatabaseManager,
) -> None:
    await check_resync_after_trim(edb, make_app)


async def read_sse(lines: AsyncIterator[str], count: int) -> list[dict[str, Any]]:
    """The next ``count`` SSE messages (comments skipped), each as its fields."""
    messages: list[dict[str, Any]] = []
    async with asyncio.timeout(TIMEOUT):
        async for fields in sse.messages(lines):
            messages.append({**fields, "data": json.loads(fields["data"])})
            if len(messages) == count:
                return messages
    raise AssertionError(f"the stream ended after {messages}")


# -- the sweeper --------------------------------------------------------------------------


def sweeper_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "aegis event sweeper"]


async def until(condition: Any) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not condition():  # noqa: ASYNC110 (polls plain attributes)
            await asyncio.sleep(0.01)


async def test_sweeper_trims_until_stopped_and_leaves_no_task(edb: DatabaseManager) -> None:
    await send(edb, "a", *range(1, 11))
    policy = RetentionPolicy(max_age=None, max_count=2, batch_size=3)
    sweeper = EventSweeper(edb, policy, every=timedelta(milliseconds=10), jitter=timedelta(0))
    sweeper.start()
    with pytest.raises(RuntimeError, match="already running"):
        sweeper.start()
    await until(lambda: sweeper.sweeps >= 2)
    await send(edb, "a", 11, 12)
    await until(lambda: sweeper.removed == 10)
    await sweeper.stop()
    await sweeper.stop()  # idempotent

    assert not sweeper.running
    assert sweeper_tasks() == []
    assert await stored(edb, "a") == [11, 12]
    assert edb.pool_status()["background"]["checked_out"] == 0

    async with sweep_events(edb, policy, every=timedelta(milliseconds=10)) as running:
        assert running.running and len(sweeper_tasks()) == 1
    assert not running.running
    assert sweeper_tasks() == []


async def test_a_failing_sweep_is_logged_and_the_sweeper_goes_on(
    edb: DatabaseManager, caplog: pytest.LogCaptureFixture
) -> None:
    await edb.drop_all(event_metadata)  # every sweep fails: no table
    sweeper = EventSweeper(edb, every=timedelta(milliseconds=10), jitter=timedelta(0))
    with caplog.at_level(logging.ERROR, logger="aegis_shared.events"):
        sweeper.start()
        await until(lambda: len([r for r in caplog.records if "sweep failed" in r.message]) >= 2)
        assert sweeper.running
        await sweeper.stop()
    assert sweeper_tasks() == []


# -- settings ------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.chdir(tmp_path)  # no .env
    for name in list(os.environ):
        if name.upper().startswith(("DATABASE_", "EVENTS_")):
            monkeypatch.delenv(name)
    yield


def test_settings_defaults_and_environment(
    clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = RetentionPolicy.from_settings(Settings())
    assert policy == RetentionPolicy(max_age=7 * DAY, max_count=None, batch_size=1000)
    assert Settings().events_retention_interval == 600

    monkeypatch.setenv("EVENTS_RETENTION_MAX_AGE", "none")
    monkeypatch.setenv("EVENTS_RETENTION_MAX_COUNT", "500")
    monkeypatch.setenv("EVENTS_RETENTION_BATCH_SIZE", "200")
    monkeypatch.setenv("EVENTS_RETENTION_INTERVAL", "30")
    settings = Settings()
    assert RetentionPolicy.from_settings(settings) == RetentionPolicy(
        max_age=None, max_count=500, batch_size=200
    )


async def test_sweeper_from_settings(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTS_RETENTION_INTERVAL", "30")
    monkeypatch.setenv("EVENTS_RETENTION_MAX_AGE", "3600")
    db = DatabaseManager("sqlite+aiosqlite://")
    try:
        sweeper = EventSweeper.from_settings(db)
        assert (sweeper.every, sweeper.jitter) == (30, 6)
        assert sweeper.policy.max_age == timedelta(hours=1)
    finally:
        await db.close()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("EVENTS_RETENTION_MAX_AGE", "0"),
        ("EVENTS_RETENTION_MAX_AGE", "-5"),
        ("EVENTS_RETENTION_MAX_AGE", "a week"),
        ("EVENTS_RETENTION_MAX_COUNT", "0"),
        ("EVENTS_RETENTION_MAX_COUNT", "1.5"),
        ("EVENTS_RETENTION_INTERVAL", "0"),
        ("EVENTS_RETENTION_BATCH_SIZE", "0"),
        ("EVENTS_RETENTION_BATCH_SIZE", str(MAX_BATCH_SIZE + 1)),
    ],
)
def test_bad_settings_are_refused_naming_the_variable(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=name):
        Settings()


@pytest.mark.parametrize(
    "options",
    [
        {"max_age": timedelta(0)},
        {"max_age": 3600},
        {"max_count": 0},
        {"max_count": True},
        {"batch_size": 0},
        {"batch_size": MAX_BATCH_SIZE + 1},
        {"batch_size": 10.0},
    ],
)
def test_bad_policies_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="is invalid"):
        RetentionPolicy(**options)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_bad_trim_and_sweeper_arguments_are_refused(edb: DatabaseManager) -> None:
    with pytest.raises(ValueError, match="aware datetime"):
        await trim_events(edb, now=datetime(2030, 1, 1))  # naive on purpose
    with pytest.raises(ConfigurationError, match="every="):
        EventSweeper(edb, every=timedelta(0))
    with pytest.raises(TypeError, match="RetentionPolicy"):
        EventSweeper(edb, {"max_age": 3600})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="DatabaseManager"):
        EventSweeper("sqlite://")  # type: ignore[arg-type]
